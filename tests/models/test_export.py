"""Self-contained exports (models/export.py, models/model_card.py).

Every saved model carries flat modeling code generated from the package and ``auto_map``: one interpreter that
cannot import hizoo (nor Triton) loads exports of every router, residual kind and experts backend, the OLMoE
converter's output and a tokenizer export with ``trust_remote_code=True`` and gets the package's logits and greedy
generations (tests/models/fresh_env_check.py). The generated code is the package's modules with only their relative
imports changed, written identically on every save; the rules that keep a module exportable raise when broken.
Special tokens agree between config, generation config and tokenizer; the tokenizer pads on the left with the
model's context length; generation stops at eos. The model card's numbers are the model's.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import OlmoeConfig, OlmoeForCausalLM, PreTrainedTokenizerFast

import hizoo
from hizoo import HizooConfig, HizooForCausalLM
from hizoo.kernels import GroupedExperts
from hizoo.kernels import experts as experts_module
from hizoo.models import export
from hizoo.models.conversion import convert_olmoe_checkpoint
from hizoo.models.model_card import CARD_MARKER, ModelCardInfo
from hizoo.models.moe import update_router_states

PACKAGE_ROOT = Path(hizoo.__file__).resolve().parent
CHECK = Path(__file__).with_name("fresh_env_check.py")
BASE = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=48, moe_intermediate_size=16, max_position_embeddings=64)
# every router, residual kind (HC static and dynamic) and experts backend at least once
VARIANTS = {
    "dense_plain_tied": dict(qk_norm=True, tie_word_embeddings=True),
    "topk_plain_eager": dict(ffn="moe", router="topk", num_experts=4, num_experts_per_tok=2, norm_topk_prob=True,
                             num_shared_experts=1, experts_backend="eager"),
    "group_limited_hc_static_grouped_mm": dict(
        ffn="moe", router="group_limited", num_experts=8, n_groups=4, topk_groups=2, num_experts_per_tok=2,
        num_dense_layers=1, residual="hc", n_streams=2, hc_dynamic=False, stream_init="rotate",
        experts_backend="grouped_mm", eval_capacity_factor=1.5),
    "himoe_hc_dynamic_triton": dict(
        ffn="moe", router="himoe", num_experts=8, n_groups=2, num_experts_per_tok=4, residual="hc", n_streams=2,
        hc_dynamic=True, stream_init="split", experts_backend="triton"),
    "himoe_mhc_lss": dict(ffn="moe", router="himoe", num_experts=8, n_groups=4, num_experts_per_tok=4, residual="mhc",
                          n_streams=3, stream_init="lss", stream_reduce="sum_norm", experts_backend="grouped_mm"),
    "topk_mhc_lite_auto": dict(ffn="moe", router="topk", num_experts=4, num_experts_per_tok=1, residual="mhc_lite",
                               n_streams=3, stream_init="balanced_rotate", stream_start="cyclic"),
}


def _perturbed_model(seed: int, **overrides) -> HizooForCausalLM:
    """A model whose every parameter and router buffer is away from its initialization (dynamic HC weights start
    at 0, Hi-MoE's EMA and DeepSeek's bias at 0), so each of them changes the logits."""
    torch.manual_seed(seed)
    model = HizooForCausalLM(HizooConfig(**{**BASE, **overrides}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    for module in model.modules():  # the in-process reference of experts_backend="triton" on CPU is grouped_mm
        if isinstance(module, GroupedExperts) and module.backend == "triton":
            module.backend = "grouped_mm"
    model.train()
    ids = torch.randint(0, BASE["vocab_size"], (2, 12))
    model(ids, labels=ids)  # moves Hi-MoE's logit EMA
    update_router_states(model)  # moves the loss-free balancing bias
    return model.eval()


def _expected(model, path: Path, generate: bool = True) -> dict:
    ids = torch.randint(0, model.config.vocab_size, (2, 10))
    with torch.no_grad():
        out = {"ids": ids, "logits": model(ids).logits, "prompt": ids[:1, :4]}
        if generate:
            out["generated"] = model.generate(out["prompt"], max_new_tokens=6, do_sample=False)
    torch.save(out, path)
    return out


def _bpe_tokenizer(special: dict) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on a few lines of Python, with the given special tokens."""
    texts = ["def main(argv):\n    return len(argv) + 1\n", "import os\nprint(os.path.join('a', 'b'))\n"] * 20
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special)


def _stopping_model(tmp: Path) -> dict:
    """An export whose eos is the token the model greedily emits a few steps in: ``generate`` must stop there."""
    for seed in range(20):
        model = _perturbed_model(100 + seed, **VARIANTS["topk_plain_eager"])
        prompt = torch.randint(0, BASE["vocab_size"], (1, 5))
        with torch.no_grad():
            free = model.generate(prompt, max_new_tokens=8, do_sample=False)[0, 5:].tolist()
        stop = next((k for k in range(2, 7) if free[k] not in free[:k]), None)
        if stop is not None:
            break
    assert stop is not None, "no seed gave a greedy path with a new token at steps 2-6"
    model.config.eos_token_id = free[stop]
    model.generation_config.eos_token_id = None  # save_pretrained fills it from the config
    path = tmp / "stops_at_eos"
    model.save_pretrained(path)
    assert json.loads((path / "generation_config.json").read_text())["eos_token_id"] == free[stop]
    with torch.no_grad():
        generated = model.generate(prompt, max_new_tokens=8, do_sample=False)
    assert generated.shape[1] == 5 + stop + 1 < 5 + 8 and generated[0, -1] == free[stop]  # stops in process
    torch.save({"prompt": prompt, "generated": generated, "ids": prompt, "logits": model(prompt).logits.detach()},
               tmp / "stops_at_eos.pt")
    return {"name": "stops_at_eos", "path": str(path), "expected": str(tmp / "stops_at_eos.pt"), "max_new_tokens": 8}


def _tokenizer_export(tmp: Path) -> dict:
    """A model exported with its tokenizer by export_pretrained (train.py's path); batched left-padded greedy
    generation in process gives each prompt the continuation it gets alone."""
    tokenizer = _bpe_tokenizer(dict(eos_token="<|endoftext|>", pad_token="<|endoftext|>", bos_token="<|endoftext|>"))
    model = _perturbed_model(7, **{**VARIANTS["himoe_mhc_lss"], "vocab_size": len(tokenizer)})
    path = export.export_pretrained(model, tmp / "with_tokenizer", tokenizer,
                                    ModelCardInfo(training_tokens=12345, validation_perplexity=3.14159))
    assert tokenizer.padding_side == "right"  # the caller's tokenizer is not changed
    saved = PreTrainedTokenizerFast.from_pretrained(path)
    prompts = ["def main(", "import os\nprint(os.path"]
    batch = saved(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=5, do_sample=False)
        for row, prompt in enumerate(prompts):
            alone = saved(prompt, return_tensors="pt")["input_ids"]
            single = model.generate(alone, max_new_tokens=5, do_sample=False)[0, alone.shape[1]:]
            batched = out[row, batch["input_ids"].shape[1]:][: len(single)]
            assert torch.equal(batched, single), (row, batched, single)
        ids = batch["input_ids"]
        torch.save({"batch": out, "ids": ids, "logits": model(ids).logits}, tmp / "with_tokenizer.pt")
    return {"name": "with_tokenizer", "path": str(path), "expected": str(tmp / "with_tokenizer.pt"),
            "tokenizer": True, "prompts": prompts, "max_new_tokens": 5, "resave": True}


def _converted_olmoe(tmp: Path) -> dict:
    """The OLMoE converter's output; the tokenizer has no pad token, the OLMoE config's pad id supplies it."""
    tokenizer = _bpe_tokenizer(dict(eos_token="<|endoftext|>"))
    torch.manual_seed(3)
    olmoe = OlmoeForCausalLM(OlmoeConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=16, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, max_position_embeddings=48, pad_token_id=1,
        eos_token_id=0, bos_token_id=None)).eval()
    with torch.no_grad():
        for p in olmoe.parameters():
            p.normal_(0.0, 0.1) if p.ndim > 1 else p.copy_(1.0 + 0.3 * torch.randn_like(p))
    olmoe.save_pretrained(tmp / "olmoe")
    tokenizer.save_pretrained(tmp / "olmoe")
    convert_olmoe_checkpoint(tmp / "olmoe", tmp / "converted")
    ids = torch.randint(0, len(tokenizer), (2, 10))
    with torch.no_grad():
        torch.save({"ids": ids, "logits": olmoe(ids).logits}, tmp / "converted.pt")
    return {"name": "converted_olmoe", "path": str(tmp / "converted"), "expected": str(tmp / "converted.pt"),
            "tokenizer": True}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Nine tiny exports with their expected outputs (~10 s; with the one interpreter that loads them all, this
    module's ~20-35 s: each export is its own model, and the check needs a fresh interpreter)."""
    tmp = tmp_path_factory.mktemp("exports")
    entries = []
    for seed, (name, overrides) in enumerate(VARIANTS.items()):
        model = _perturbed_model(seed, **overrides)
        model.save_pretrained(tmp / name)
        expected = _expected(model, tmp / f"{name}.pt")
        if name == "topk_plain_eager":
            with torch.no_grad():
                expected["hidden"] = model.model(expected["ids"]).last_hidden_state
            torch.save(expected, tmp / f"{name}.pt")
        entries.append({"name": name, "path": str(tmp / name), "expected": str(tmp / f"{name}.pt"),
                        "max_new_tokens": 6, "resave": name == "himoe_hc_dynamic_triton",
                        "expect_warning": "Triton is not installed" if "triton" in name else None})
    entries += [_stopping_model(tmp), _tokenizer_export(tmp), _converted_olmoe(tmp)]
    return tmp, entries


@pytest.fixture(scope="module")
def fresh_run(exports):
    tmp, entries = exports
    return run_fresh_env_check(tmp, entries)


def run_fresh_env_check(tmp: Path, entries: list[dict]) -> subprocess.CompletedProcess:
    """tests/models/fresh_env_check.py on ``entries`` in an isolated interpreter (-I: no PYTHONPATH, no script dir
    on sys.path) with its own transformers module cache."""
    manifest = tmp / "manifest.json"
    manifest.write_text(json.dumps({"exports": entries, "forbidden_roots": [str(PACKAGE_ROOT)]}))
    env = {"HF_MODULES_CACHE": str(tmp / "hf_modules"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
           "HOME": str(tmp), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-I", str(CHECK), str(manifest)], capture_output=True, text=True,
                          timeout=300, cwd=tmp, env=env)


def _ok(result, name):
    assert f"ok {name}\n" in result.stdout, result.stdout + result.stderr[-4000:]


@pytest.mark.slow  # saves every kind and loads it in a fresh interpreter
@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_kind_loads_without_hizoo_with_the_same_logits_and_generation(fresh_run, name):
    _ok(fresh_run, name)


@pytest.mark.slow  # saves every kind and loads it in a fresh interpreter
def test_the_fresh_environment_check_ran_every_export_and_found_no_hizoo_module(fresh_run, exports):
    assert fresh_run.returncode == 0, fresh_run.stdout + fresh_run.stderr[-4000:]
    assert f"all {len(exports[1])} exports loaded without hizoo" in fresh_run.stdout


@pytest.mark.slow  # saves every kind and loads it in a fresh interpreter
def test_generation_stops_at_eos_in_the_exported_model(fresh_run):
    _ok(fresh_run, "stops_at_eos")


@pytest.mark.slow  # saves every kind and loads it in a fresh interpreter
def test_exported_tokenizer_pads_left_and_agrees_on_special_tokens(fresh_run, exports):
    _ok(fresh_run, "with_tokenizer")
    path = Path(exports[0] / "with_tokenizer")
    config = json.loads((path / "config.json").read_text())
    generation = json.loads((path / "generation_config.json").read_text())
    tokenizer = json.loads((path / "tokenizer_config.json").read_text())
    assert config["eos_token_id"] == config["pad_token_id"] == config["bos_token_id"] == 0  # <|endoftext|>
    assert [generation[f"{k}_token_id"] for k in ("bos", "eos", "pad")] == [0, 0, 0]
    assert tokenizer["padding_side"] == "left" and tokenizer["model_max_length"] == BASE["max_position_embeddings"]


@pytest.mark.slow  # saves every kind and loads it in a fresh interpreter
def test_converted_olmoe_is_self_contained_with_the_olmoe_special_tokens(fresh_run, exports):
    _ok(fresh_run, "converted_olmoe")
    path = exports[0] / "converted"
    config = json.loads((path / "config.json").read_text())
    assert config["auto_map"] == export.AUTO_MAP and (path / "modeling_hizoo.py").is_file()
    assert (config["eos_token_id"], config["pad_token_id"]) == (0, 1)  # OLMoE's config
    tokenizer = json.loads((path / "tokenizer_config.json").read_text())
    assert tokenizer["padding_side"] == "left" and tokenizer["model_max_length"] == 48
    assert PreTrainedTokenizerFast.from_pretrained(path).pad_token_id == 1  # from the OLMoE config
    card = (path / "README.md").read_text()
    assert "converted from the OLMoE checkpoint" in card and f'from_pretrained("{path}"' in card


# ------------------------------------------------------------------------------------------------ generated code
def test_generated_code_is_the_package_with_only_relative_imports_changed():
    code = export.package_code()
    assert code == export.package_code()  # deterministic
    assert {"configuration_hizoo.py", "modeling_hizoo.py", "hizoo_routing_topk.py", "hizoo_routing_himoe.py",
            "hizoo_routing_group_limited.py", "hizoo_kernels_grouped_mm.py", "hizoo_kernels_triton_experts.py",
            "hizoo_models_hyper_connections.py", "hizoo_models_sinkhorn.py"} <= set(code)
    sources = {}
    for source in (*PACKAGE_ROOT.glob("*/*.py"),):
        sources[export.flat_name(source.relative_to(PACKAGE_ROOT))] = source
    for name, text in code.items():
        source = sources[name.removesuffix(".py")]
        assert source.parent.name not in ("analysis", "data", "study", "tests")
        assert source.name not in ("lightning.py", "weight_decay.py", "convert_olmoe.py")
        original = source.read_text()
        header, body = text.split("\n", 3)[:3], text.split("\n", 3)[3]
        assert header[0].startswith(f"# Generated by hizoo {hizoo.__version__} from {source.relative_to(PACKAGE_ROOT)}")
        assert ast.get_docstring(ast.parse(body)) == ast.get_docstring(ast.parse(original)) is not None
        rewritten = {line for node in ast.walk(ast.parse(original)) if isinstance(node, ast.ImportFrom) and node.level
                     for line in range(node.lineno - 1, node.end_lineno)}
        old_lines, new_lines = original.splitlines(), body.splitlines()
        assert len(old_lines) == len(new_lines)
        for i, (old, new) in enumerate(zip(old_lines, new_lines)):
            if i in rewritten:
                assert new == "" or new.lstrip().startswith("from .") and ".." not in new, new
            else:
                assert old == new, (name, i, old, new)


def test_transformers_finds_every_generated_file_from_the_entry_modules(tmp_path):
    from transformers.dynamic_module_utils import get_relative_import_files

    written = export.write_code_files(tmp_path)
    found = {"configuration_hizoo.py", "modeling_hizoo.py"}
    for entry in ("configuration_hizoo.py", "modeling_hizoo.py"):
        found |= {Path(f).name for f in get_relative_import_files(tmp_path / entry)}
    assert found == set(written) == {p.name for p in tmp_path.glob("*.py")}


@pytest.mark.parametrize("source, fragment", [
    ("import hizoo.routing\n", "imported absolutely"),
    ("def f():\n    from hizoo.routing import Router\n", "imported absolutely"),
    ("from . import moe\n", "imports modules as names"),
    ("from ..kernels import eager\n", "is a module of kernels/"),
    ("from ..nowhere import x\n", "is not a module of the hizoo package"),
    ("from .. import HizooConfig\n", "imports modules as names"),
    ("x = 1; from .moe import MoEFeedForward\n", "statement of its own lines"),
])
def test_an_unexportable_import_raises_naming_the_file(source, fragment):
    with pytest.raises(ValueError, match=fragment) as err:
        export.rewrite_module(Path("models/new_module.py"), source)
    assert "models/new_module.py:" in str(err.value)


@pytest.mark.parametrize("text, fragment", [
    ("import lightning\n", r"imports \['lightning'\] at module level"),
    ('"""Example:\nfrom .ghost import x\n"""\n', r"relative imports of \['ghost'\]"),
])
def test_code_that_transformers_would_refuse_raises(text, fragment):
    with pytest.raises(ValueError, match=fragment):
        export.check_code_files({"modeling_hizoo.py": text})


def test_imports_inside_try_and_lazy_relative_imports_pass():
    export.check_code_files({"modeling_hizoo.py": "try:\n    import triton\nexcept ImportError:\n    triton = None\n"
                                                  "def f():\n    from .other import g\n", "other.py": "g = 1\n"})


def test_multiline_relative_import_keeps_the_line_count():
    text = "from ..routing import (\n    Router,\n    RoutingResult as R,\n)\nx = 1\n"
    out, needed = export.rewrite_module(Path("models/new_module.py"), text)
    assert out == "from .hizoo_routing import Router, RoutingResult as R\n\n\n\nx = 1\n"
    assert needed == [Path("routing/__init__.py")]


def test_register_for_auto_class_then_save_pretrained_works(tmp_path):
    """transformers' own code copy fails on the package's `..` imports; the generated files replace it."""
    model = HizooForCausalLM(HizooConfig(**BASE))
    try:
        HizooForCausalLM.register_for_auto_class("AutoModelForCausalLM")
        HizooConfig.register_for_auto_class()
        model.save_pretrained(tmp_path)
    finally:
        del HizooForCausalLM._auto_class, HizooConfig._auto_class
    assert HizooForCausalLM._auto_class is None and HizooConfig._auto_class is None
    assert json.loads((tmp_path / "config.json").read_text())["auto_map"] == export.AUTO_MAP
    assert not (tmp_path / "modeling.py").exists() and not (tmp_path / "configuration.py").exists()
    assert (tmp_path / "modeling_hizoo.py").is_file()


def test_stale_generated_files_are_removed_and_foreign_files_kept(tmp_path):
    (tmp_path / "hizoo_models_gone.py").write_text("# Generated by hizoo 0.0.1 from models/gone.py ...\n")
    (tmp_path / "hizoo_mine.py").write_text("# my own helper\n")
    export.write_code_files(tmp_path)
    assert not (tmp_path / "hizoo_models_gone.py").exists() and (tmp_path / "hizoo_mine.py").is_file()


def test_triton_backend_falls_back_to_grouped_mm_without_triton(monkeypatch):
    monkeypatch.setattr(experts_module, "triton_available", lambda: False)
    experts_module._warn_triton_missing.cache_clear()
    with pytest.warns(UserWarning, match="Triton is not installed"):
        assert experts_module.resolve_backend("triton", torch.device("cpu")) == "grouped_mm"
    assert experts_module.resolve_backend("auto", torch.device("cuda")) == "grouped_mm"
    assert experts_module.resolve_backend("eager", torch.device("cpu")) == "eager"


# ------------------------------------------------------------------------------------------------ special tokens
def test_special_tokens_come_from_the_tokenizer_and_pad_defaults_to_eos():
    tokenizer = _bpe_tokenizer(dict(eos_token="<|endoftext|>"))
    model = HizooForCausalLM(HizooConfig(**{**BASE, "vocab_size": len(tokenizer), "max_position_embeddings": 40}))
    aligned = export.align_special_tokens(model, tokenizer)
    assert (model.config.eos_token_id, model.config.pad_token_id, model.config.bos_token_id) == (0, 0, None)
    g = model.generation_config
    assert (g.eos_token_id, g.pad_token_id, g.bos_token_id) == (0, 0, None)
    assert aligned.pad_token_id == 0 and aligned.padding_side == "left" and aligned.model_max_length == 40
    assert tokenizer.pad_token_id is None and tokenizer.padding_side == "right"  # a copy was changed


def test_special_tokens_that_disagree_raise():
    tokenizer = _bpe_tokenizer(dict(eos_token="<|endoftext|>"))
    model = HizooForCausalLM(HizooConfig(**{**BASE, "vocab_size": len(tokenizer), "eos_token_id": 5}))
    with pytest.raises(ValueError, match=r"eos_token_id disagrees: the model config has 5, the tokenizer 0"):
        export.align_special_tokens(model, tokenizer)


# ------------------------------------------------------------------------------------------------ model card
def test_model_card_numbers_are_the_models(tmp_path):
    config = HizooConfig(**{**BASE, "ffn": "moe", "router": "topk", "num_experts": 4, "num_experts_per_tok": 2})
    model = HizooForCausalLM(config)
    V, d, L, E, K, f = 64, 32, 2, 4, 2, 16
    attention = d * 32 + 2 * d * 16 + 32 * d  # q, k, v (2 kv heads of 8), o
    layer = attention + 2 * d + E * d + E * 3 * d * f  # + two norms, router, experts
    total = 2 * V * d + L * layer + d  # embedding, lm_head (untied), layers, final norm
    active = total - L * (E - K) * 3 * d * f
    assert (config.num_parameters(), config.num_parameters(active=True)) == (total, active)
    assert total == sum(p.numel() for p in model.parameters())
    model.save_pretrained(tmp_path / "m", model_card=ModelCardInfo(training_tokens=1_536_000,
                                                                  validation_perplexity=12.3456))
    card = (tmp_path / "m" / "README.md").read_text()
    assert (f"| parameters | {total:,} ({total / 1e3:.3g}K) total, {active:,} ({active / 1e3:.3g}K) active per "
            "token |") in card
    assert "| training tokens | 1,536,000 (1.54M) |" in card and "| validation perplexity | 12.35 |" in card
    assert "top-2 per token" in card and "4 SwiGLU experts of intermediate size 16" in card
    assert '"m", trust_remote_code=True)' in card and "import hizoo" in card
    assert f"| context length | {BASE['max_position_embeddings']} tokens" in card
    model.save_pretrained(tmp_path / "m")  # the same card without the facts, and deterministic
    assert "| training tokens | not recorded |" in (tmp_path / "m" / "README.md").read_text()


def test_model_card_states_router_and_residual_kind(tmp_path):
    model = HizooForCausalLM(HizooConfig(**{**BASE, **VARIANTS["himoe_mhc_lss"]}))
    model.save_pretrained(tmp_path, model_card={"training_data": "the stdlib corpus"})
    card = (tmp_path / "README.md").read_text()
    assert "`himoe` (Hi-MoE)" in card and "top-1 in each of the 4 groups of 2 experts (K = 4)" in card
    assert "`mhc`: manifold-constrained hyper-connections" in card and "3 streams" in card
    assert "stream init `lss`" in card and "output `sum_norm`" in card and "the stdlib corpus" in card


def test_model_card_states_capacity_and_static_hc(tmp_path):
    model = HizooForCausalLM(HizooConfig(**{**BASE, **VARIANTS["group_limited_hc_static_grouped_mm"]}))
    model.save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert "`hc`: hyper-connections (Zhu et al. 2024, arXiv 2409.19606), 2 streams, static;" in card
    assert "dropless in training, capacity factor 1.5 in eval and generation" in card
    assert "`group_limited` (DeepSeek-V3): sigmoid scores, the best 2 of 4 groups" in card
    assert "the first 1 layer(s) dense SwiGLU of size 48" in card


def test_a_tied_lm_head_is_counted_once():
    def counts(config):
        total = sum(p.numel() for p in HizooForCausalLM(config).parameters())  # a tied weight is yielded once
        assert config.num_parameters() == total
        return total, config.num_parameters(active=True)

    untied = counts(HizooConfig(**BASE))
    tied = counts(HizooConfig(**{**BASE, "tie_word_embeddings": True}))
    assert untied[0] - tied[0] == BASE["vocab_size"] * BASE["hidden_size"] and tied[0] == tied[1]  # dense: all active


def test_a_readme_hizoo_did_not_write_is_kept(tmp_path):
    (tmp_path / "README.md").write_text("# my model\n")
    HizooForCausalLM(HizooConfig(**BASE)).save_pretrained(tmp_path)
    assert (tmp_path / "README.md").read_text() == "# my model\n"
    (tmp_path / "README.md").write_text(f"{CARD_MARKER}\nold card\n")
    HizooForCausalLM(HizooConfig(**BASE)).save_pretrained(tmp_path)
    assert "# hizoo dense language model" in (tmp_path / "README.md").read_text()


@pytest.mark.parametrize("bad", [dict(training_tokens=-1), dict(training_tokens=1.5), dict(training_sequence_length=0),
                                 dict(validation_perplexity=0.5),
                                 dict(validation_perplexity=float("nan")), dict(source=3)])
def test_bad_card_facts_raise(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        ModelCardInfo(**bad)
