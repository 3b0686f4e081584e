"""Run by test_export.py (and test_train.py) as ``python -I fresh_env_check.py MANIFEST.json``: loads hizoo exports
the way a user without hizoo does, ``AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)``, in an
interpreter that cannot import hizoo (nor Triton, so the triton experts backend must fall back).

Before anything else a meta-path finder refuses ``hizoo`` and ``triton`` (the editable install would otherwise
find hizoo), and at the end no loaded module may come from the package's folders, so a load that used hizoo fails
here. For each export in the manifest it checks what the entry asks: logits and greedy generation equal to the ones
the package computed (``expected``: a torch file of plain tensors), ``check_imports`` passing on every code file
(what transformers demands before loading from the Hub), the base model through ``AutoModel``, the tokenizer's
padding side, context length and special tokens, batched left-padded generation, a stop at eos, and a re-save from
the loaded model that writes the same code and loads again. Prints one line per export; exits non-zero on failure.
"""

import importlib.abc
import json
import sys
import warnings
from pathlib import Path

BLOCKED = ("hizoo", "triton")


class _Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (refused by fresh_env_check)", name=name)
        return None


sys.meta_path.insert(0, _Refuse())
for blocked in BLOCKED:
    try:
        __import__(blocked)
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit(f"{blocked} is importable: this environment cannot show that exports load without it")

import tempfile  # noqa: E402

import torch  # noqa: E402
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from transformers.dynamic_module_utils import check_imports  # noqa: E402


def check_tokenizer(model, path: str, entry: dict, expected: dict) -> None:
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=True)  # it reads the config, whose code is the export's
    config, generation = model.config, model.generation_config
    assert tok.padding_side == "left", tok.padding_side
    assert tok.model_max_length == config.max_position_embeddings, (tok.model_max_length, config)
    for name in ("bos", "eos", "pad"):
        key = f"{name}_token_id"
        ids = {getattr(config, key), getattr(generation, key), getattr(tok, key)}
        assert len(ids) == 1, f"{name} ids differ: {ids}"
    assert config.eos_token_id is not None and config.pad_token_id is not None
    if "prompts" in entry:
        batch = tok(entry["prompts"], return_tensors="pt", padding=True)
        assert (batch["attention_mask"][:, 0] == 0).any(), "the prompts should need padding"
        out = model.generate(**batch, max_new_tokens=entry["max_new_tokens"], do_sample=False)
        assert torch.equal(out, expected["batch"]), (out, expected["batch"])


def resave_and_reload(model, path: str, ids) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        again = Path(tmp) / "again"
        model.save_pretrained(again)
        code = sorted(p.name for p in Path(path).glob("*.py"))
        assert sorted(p.name for p in again.glob("*.py")) == code
        for name in code:
            assert (again / name).read_bytes() == (Path(path) / name).read_bytes(), f"re-saved {name} differs"
        assert json.loads((again / "config.json").read_text())["auto_map"] == json.loads(
            (Path(path) / "config.json").read_text())["auto_map"]
        assert "hizoo model card" in (again / "README.md").read_text()
        reloaded = AutoModelForCausalLM.from_pretrained(again, trust_remote_code=True).eval()
        with torch.no_grad():
            assert torch.equal(reloaded(ids).logits, model(ids).logits)


def main(manifest_path: str) -> None:
    manifest = json.loads(Path(manifest_path).read_text())
    for entry in manifest["exports"]:
        path = entry["path"]
        for file in sorted(Path(path).glob("*.py")):
            check_imports(file)  # what a load from the Hub runs on every code file; raises on a missing package
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()
            assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
            expected = torch.load(entry["expected"], weights_only=True) if "expected" in entry else {}
            with torch.no_grad():
                if "ids" in expected:
                    logits = model(expected["ids"], attention_mask=expected.get("attention_mask")).logits
                    torch.testing.assert_close(logits, expected["logits"], rtol=1e-5, atol=1e-5)
                if "generated" in expected:
                    out = model.generate(expected["prompt"], max_new_tokens=entry["max_new_tokens"], do_sample=False)
                    assert torch.equal(out, expected["generated"]), (out, expected["generated"])
                if "hidden" in expected:
                    base = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
                    assert type(base).__name__ == "HizooModel"
                    torch.testing.assert_close(base(expected["ids"]).last_hidden_state, expected["hidden"])
            if entry.get("tokenizer"):
                check_tokenizer(model, path, entry, expected)
            if entry.get("resave"):
                resave_and_reload(model, path, expected["ids"])
        messages = [str(w.message) for w in caught]
        if entry.get("expect_warning"):
            assert any(entry["expect_warning"] in m for m in messages), messages
        print(f"ok {entry['name']}")
    roots = [Path(r).resolve() for r in manifest["forbidden_roots"]]
    this_script = Path(__file__).resolve()  # __main__ (and multiprocessing's __mp_main__ alias)
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file is None or Path(file).resolve() == this_script:
            continue
        if any(root == Path(file).resolve() or root in Path(file).resolve().parents for root in roots):
            raise SystemExit(f"module {name} was loaded from the hizoo package ({file})")
    assert not any(name.split(".")[0] in BLOCKED for name in sys.modules), "a blocked package got imported"
    print(f"all {len(manifest['exports'])} exports loaded without hizoo")


if __name__ == "__main__":
    main(sys.argv[1])
