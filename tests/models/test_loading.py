"""Loading is strict: weights the config does not describe, or a config the weights do not fill, raise an error
listing the keys on every load path (from_pretrained, the Auto classes, Lightning checkpoints, the analysis CLI);
the tied lm_head, strict=False, ignore_mismatched_sizes and output_loading_info keep their meaning."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

import hizoo  # noqa: F401  (registers the Auto classes)
from hizoo import HizooConfig, HizooForCausalLM
from hizoo.analysis.__main__ import main as analysis_main
from hizoo.models.lightning import load_model_from_checkpoint

CFG = dict(vocab_size=48, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
           residual="mhc", n_streams=2)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("export") / "model"
    HizooForCausalLM(HizooConfig(**CFG)).save_pretrained(path)
    return path


def _edited(export, tmp_path, **config_changes):
    path = tmp_path / "edited"
    shutil.copytree(export, path)
    config = json.loads((path / "config.json").read_text())
    config.update(config_changes)
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("changes, fragments", [
    ({"num_hidden_layers": 1}, ["num_hidden_layers=1", "have no place in the model", "model.layers.1.attn.q_proj"]),
    ({"num_hidden_layers": 3}, ["num_hidden_layers=3", "not in the files (they would start random)",
                                "model.layers.2.attn.q_proj"]),
    ({"residual": "hc"}, ["residual='hc'", "model.layers.{0, 1}.attn_conn.static_mix",
                          "model.layers.{0, 1}.attn_conn.res_bias"]),
    ({"n_streams": 4}, ["n_streams=4", "another shape", "(files (2", "vs model (4"]),
])
@pytest.mark.parametrize("loader", ["HizooForCausalLM", "AutoModelForCausalLM", "load_model_from_checkpoint"])
def test_a_config_that_does_not_match_the_weights_raises(export, tmp_path, changes, fragments, loader):
    path = _edited(export, tmp_path, **changes)
    load = {"HizooForCausalLM": HizooForCausalLM.from_pretrained,
            "AutoModelForCausalLM": AutoModelForCausalLM.from_pretrained,
            "load_model_from_checkpoint": load_model_from_checkpoint}[loader]
    with pytest.raises(ValueError, match="does not hold the weights of the model its config describes") as err:
        load(path)
    assert str(path) in str(err.value)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_weights_missing_from_the_safetensors_file_raise(export, tmp_path):
    path = _edited(export, tmp_path)
    weights = load_file(path / "model.safetensors")
    del weights["model.layers.1.ffn.up_proj.weight"]
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"1 weights the model needs are not in the files.*layers\.1\.ffn\.up_proj"):
        HizooForCausalLM.from_pretrained(path)


def test_an_export_without_weight_files_raises(export, tmp_path):
    path = _edited(export, tmp_path)
    (path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights .* an incomplete export"):
        load_model_from_checkpoint(path)
    with pytest.raises(OSError):  # transformers' own error for the direct path
        HizooForCausalLM.from_pretrained(path)


def test_a_truncated_safetensors_file_is_named(export, tmp_path):
    path = _edited(export, tmp_path)
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors cannot be read: a truncated or corrupt safetensors"):
        HizooForCausalLM.from_pretrained(path)


@pytest.mark.parametrize("changes, fragment", [
    ({}, None),
    ({"num_hidden_layers": 1}, "does not hold the weights"),
    ("no weights", "an incomplete export"),
])
def test_analysis_cli_refuses_a_broken_export_with_a_message(export, tmp_path, capsys, changes, fragment):
    path = _edited(export, tmp_path, **(changes if isinstance(changes, dict) else {}))
    if changes == "no weights":
        (path / "model.safetensors").unlink()
    args = [str(path), "--out", str(tmp_path / "out"), "--seq-len", "8", "--num-seqs", "1", "--no-ablation"]
    if fragment is None:
        assert analysis_main(args) == 0
        return
    with pytest.raises(SystemExit) as exit_:
        analysis_main(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"cannot load {path}" in err and fragment in err
    assert not (tmp_path / "out").exists()


def test_tied_lm_head_loads_and_keeps_the_tie(tmp_path):
    torch.manual_seed(0)
    model = HizooForCausalLM(HizooConfig(**CFG, tie_word_embeddings=True))
    model.save_pretrained(tmp_path)
    loaded, info = HizooForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set()
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    torch.testing.assert_close(loaded.lm_head.weight, model.lm_head.weight)


def test_strict_false_and_loading_info_keep_transformers_behaviour(export, tmp_path):
    path = _edited(export, tmp_path, num_hidden_layers=1)
    model, info = HizooForCausalLM.from_pretrained(path, strict=False, output_loading_info=True)
    assert model.config.num_hidden_layers == 1 and not hasattr(model.config, "strict")
    assert "model.layers.1.attn.q_proj.weight" in info["unexpected_keys"]
    model = AutoModelForCausalLM.from_pretrained(path, strict=False)
    assert isinstance(model, HizooForCausalLM)
    # ignore_mismatched_sizes allows (only) shape mismatches, as in transformers
    path = _edited(export, tmp_path / "wide", n_streams=4)
    model, info = HizooForCausalLM.from_pretrained(path, ignore_mismatched_sizes=True, output_loading_info=True)
    assert info["mismatched_keys"] and model.config.n_streams == 4


def test_lightning_checkpoint_with_another_config_raises(tmp_path):
    torch.manual_seed(0)
    model = HizooForCausalLM(HizooConfig(**CFG))
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    for changes, fragment in [({"num_hidden_layers": 3}, "not in the files"),
                              ({"n_streams": 4}, "another shape"),
                              ({"residual": "hc", "hc_dynamic": False}, "have no place in the model")]:
        ckpt = tmp_path / "x.ckpt"
        torch.save({"hizoo_config": {**model.config.to_dict(), **changes}, "state_dict": state}, ckpt)
        with pytest.raises(ValueError, match=fragment) as err:
            load_model_from_checkpoint(ckpt)
        assert f"checkpoint {ckpt}" in str(err.value)
    torch.save({"hizoo_config": {**model.config.to_dict(), "residual": "hyper"}, "state_dict": state}, ckpt)
    with pytest.raises(ValueError, match="holds an invalid hizoo_config.*residual"):
        load_model_from_checkpoint(ckpt)
