"""The converter's command line refuses what would lose data or write random weights: the source as (or around,
or inside) the destination, a file or a non-empty folder as destination without --overwrite, a source that is not
OLMoE or lacks weights; each exits 2 with a message and writes nothing. A conversion that fails midway leaves the
destination as it was."""

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import OlmoeConfig, OlmoeForCausalLM

from hizoo import HizooForCausalLM
from hizoo.models.convert_olmoe import main


def _digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def olmoe(tmp_path_factory):
    torch.manual_seed(0)
    model = OlmoeForCausalLM(OlmoeConfig(vocab_size=64, hidden_size=32, intermediate_size=16, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, num_experts=4,
                                         num_experts_per_tok=2, max_position_embeddings=32,
                                         pad_token_id=0, eos_token_id=1)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    path = tmp_path_factory.mktemp("olmoe") / "src"
    model.save_pretrained(path)
    return model, path


def _fails(argv, capsys, *fragments):
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in err, err
    return err


def _matches(olmoe_model, dst):
    loaded = HizooForCausalLM.from_pretrained(dst).eval()
    ids = torch.randint(0, 64, (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, olmoe_model(ids).logits, atol=1e-4, rtol=1e-4)


def test_the_source_as_destination_is_refused_and_untouched(olmoe, capsys):
    _, src = olmoe
    before = _digest(src)
    _fails([src, src], capsys, "is the source")
    _fails([src, src, "--overwrite"], capsys, "is the source")
    _fails([src, src / ".." / src.name], capsys, "is the source")  # the same folder by another path
    _fails([src, src / "hizoo"], capsys, "overlaps the source")  # inside the source
    _fails([src, src.parent, "--overwrite"], capsys, "overlaps the source")  # replacing it would delete the source
    assert _digest(src) == before and not (src / "hizoo").exists()


def test_a_file_or_a_non_empty_folder_as_destination_is_refused(olmoe, tmp_path, capsys):
    model, src = olmoe
    file = tmp_path / "model.bin"
    file.write_bytes(b"keep me")
    _fails([src, file], capsys, f"destination {file} is a file")
    _fails([src, file, "--overwrite"], capsys, "is a file")
    assert file.read_bytes() == b"keep me"
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    _fails([src, folder], capsys, "is not empty; pass --overwrite")
    assert _digest(folder) == {"notes.txt": hashlib.sha256(b"keep me").hexdigest()}
    main([str(src), str(folder), "--overwrite"])  # replaces the folder as a whole: no stale file stays
    assert "verified" in capsys.readouterr().out
    assert not (folder / "notes.txt").exists()
    _matches(model, folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    main([str(src), str(empty)])  # an empty folder is a fine destination
    _matches(model, empty)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("model_type", ["hizoo", "llama", None])
def test_a_source_that_is_not_olmoe_is_refused_before_loading(olmoe, tmp_path, capsys, model_type):
    _, src = olmoe
    fake = tmp_path / "src"
    fake.mkdir()
    config = json.loads((src / "config.json").read_text())
    config.pop("model_type")
    if model_type:
        config["model_type"] = model_type
    (fake / "config.json").write_text(json.dumps(config))
    (fake / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes())
    _fails([fake, tmp_path / "dst"], capsys, f"model_type={model_type!r}: not an OLMoE checkpoint")
    assert not (tmp_path / "dst").exists()


def test_a_source_missing_weights_or_with_a_broken_config_is_refused(olmoe, tmp_path, capsys):
    _, src = olmoe
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((src / "config.json").read_text())
    weights = load_file(src / "model.safetensors")
    del weights["model.layers.1.mlp.gate.weight"]
    save_file(weights, partial / "model.safetensors", metadata={"format": "pt"})
    _fails([partial, tmp_path / "dst"], capsys, "does not hold every weight", "model.layers.1.mlp.gate.weight")
    (partial / "config.json").write_text('{"model_type": "olm')
    _fails([partial, tmp_path / "dst"], capsys, f"{partial / 'config.json'} is not valid JSON")
    _fails([tmp_path / "nowhere", tmp_path / "dst"], capsys, "does not exist")
    assert not (tmp_path / "dst").exists()


def test_every_hizoo_weight_must_come_from_an_olmoe_tensor(olmoe):
    model, _ = olmoe
    with pytest.raises(ValueError, match=r"not in the files.*attn_conn.*overrides \{'residual': 'mhc'"):
        HizooForCausalLM.from_olmoe(model, residual="mhc", n_streams=2)  # connections OLMoE has no weights for


def test_a_conversion_that_fails_midway_leaves_the_destination_as_it_was(olmoe, tmp_path, capsys, monkeypatch):
    _, src = olmoe
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "old.txt").write_text("previous model")

    def save_half(self, directory, **kwargs):
        (directory / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(HizooForCausalLM, "save_pretrained", save_half)
    _fails([src, dst, "--overwrite"], capsys, "disk full")
    assert _digest(dst) == {"old.txt": hashlib.sha256(b"previous model").hexdigest()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst"]


def test_config_mismatch_of_a_converted_model_is_caught_on_load(olmoe, tmp_path):
    model, src = olmoe
    main([str(src), str(tmp_path / "dst")])
    config = json.loads((tmp_path / "dst" / "config.json").read_text())
    assert config["num_experts"] == 4
    config["num_experts"] = 8
    (tmp_path / "dst" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="another shape"):
        HizooForCausalLM.from_pretrained(tmp_path / "dst")
