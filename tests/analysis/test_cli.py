import json

import pytest
import torch

from hizoo import HizooConfig, HizooForCausalLM
from hizoo.analysis.__main__ import main
from hizoo.analysis.loading import load_model

CFG = dict(vocab_size=48, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
           ffn="moe", num_experts=4, num_experts_per_tok=2, n_groups=2, router="himoe", moe_intermediate_size=8,
           experts_backend="eager", residual="mhc", n_streams=2, stream_init="lss")


def _trained(steps=3):
    torch.manual_seed(0)
    model = HizooForCausalLM(HizooConfig(**CFG))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.randint(0, 48, (2, 12))
    for _ in range(steps):
        model(ids, labels=ids, use_cache=False).loss.backward()
        opt.step()
        opt.zero_grad()
    return model


def test_cli_on_an_hf_directory_writes_pngs_report_and_summary(tmp_path, capsys):
    _trained().save_pretrained(tmp_path / "model")
    out = tmp_path / "out"
    assert main([str(tmp_path / "model"), "--out", str(out), "--seq-len", "12", "--num-seqs", "2"]) == 0
    pngs = sorted(p.name for p in out.glob("*.png"))
    # no domain ids in the CLI's data, so no domain figure
    assert pngs == ["experts_group_loads.png", "experts_load_heatmap.png", "streams_amax_depth.png",
                    "streams_logit_spread.png", "streams_mix.png", "streams_mix_sums.png", "streams_norm_shares.png"]
    assert all((out / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
    report = json.loads((out / "report.json").read_text())
    assert report["experts"]["moe_layers"] == [0, 1]
    assert len(report["streams"]["ablation"]["loss_increase"]) == 2
    assert "lss_scales" in report["streams"]
    assert "RANDOM token ids" in report["data"]  # no tokenizer was saved next to the model
    summary = (out / "summary.txt").read_text()
    assert "RANDOM" in summary and "expert balance" in summary and "effective streams" in summary


def test_loader_reads_a_lightning_style_checkpoint_and_rejects_others(tmp_path):
    model = _trained(1)
    ckpt = {"hizoo_config": model.config.to_dict(),
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}
    torch.save(ckpt, tmp_path / "a.ckpt")
    loaded = load_model(tmp_path / "a.ckpt")
    ids = torch.randint(0, 48, (1, 6))
    with torch.no_grad():
        assert torch.allclose(loaded.eval()(ids).logits, model.eval()(ids).logits, atol=1e-6)
    torch.save({"state_dict": {}}, tmp_path / "b.ckpt")
    with pytest.raises(ValueError, match="hizoo_config"):
        load_model(tmp_path / "b.ckpt")
    (tmp_path / "c.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read"):
        load_model(tmp_path / "c.ckpt")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing")


class _CharTokenizer:
    """Stands in for a saved HF tokenizer: one id per character."""

    def __call__(self, text, return_tensors, add_special_tokens):
        return {"input_ids": torch.tensor([[ord(c) % 48 for c in text]])}


def test_held_out_ids_make_one_domain_per_data_file():
    from hizoo.analysis.__main__ import held_out_ids

    ids, dom, names, source = held_out_ids(_CharTokenizer(), {"a.txt": "x" * 50, "b.txt": "y" * 30}, 48, 3, 10)
    assert ids.shape == (6, 10) and names == ["a.txt", "b.txt"]
    assert dom[:, 0].tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="fewer than --seq-len"):
        held_out_ids(_CharTokenizer(), {"short.txt": "x" * 5}, 48, 3, 10)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        held_out_ids(None, {"a.txt": "x"}, 48, 3, 10)
