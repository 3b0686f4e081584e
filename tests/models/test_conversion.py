"""OLMoE import: a random small OlmoeForCausalLM converts into hizoo with the same logits (fp32, atol 1e-4),
also after save_pretrained -> AutoModelForCausalLM.from_pretrained in a fresh interpreter, and via the CLI."""

import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, OlmoeConfig, OlmoeForCausalLM

import hizoo  # noqa: F401  (registers the Auto classes)
from hizoo import HizooForCausalLM


def _random_olmoe(seed: int = 0, **overrides) -> OlmoeForCausalLM:
    """A small OLMoE whose weights are scaled up (std 0.1, random norm gains) so logits and routing are far
    from uniform and a conversion bug cannot hide in tiny activations."""
    torch.manual_seed(seed)
    kwargs = dict(vocab_size=128, hidden_size=64, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, num_experts=8, num_experts_per_tok=2, max_position_embeddings=64,
                  pad_token_id=0, eos_token_id=1)
    kwargs.update(overrides)
    model = OlmoeForCausalLM(OlmoeConfig(**kwargs)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.1)
    return model


@pytest.mark.parametrize("overrides", [{}, {"norm_topk_prob": True, "num_key_value_heads": 4}])
def test_logits_match_transformers(overrides):
    olmoe = _random_olmoe(**overrides)
    ours = HizooForCausalLM.from_olmoe(olmoe)
    assert ours.config.qk_norm and ours.config.router == "topk"
    ids = torch.randint(0, 128, (3, 20))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0  # left padding in one row
    with torch.no_grad():
        ref = olmoe(ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask).logits
    assert ref.abs().max() > 1.0  # the comparison is not between near-zero tensors
    torch.testing.assert_close(got[mask.bool()], ref[mask.bool()], atol=1e-4, rtol=1e-4)


def test_router_choices_match_transformers():
    olmoe = _random_olmoe()
    ours = HizooForCausalLM.from_olmoe(olmoe)
    ids = torch.randint(0, 128, (2, 16))
    with torch.no_grad():
        ref = olmoe(ids, output_router_logits=True).router_logits
        got = ours(ids, output_router_logits=True).router_logits
    assert len(got) == len(ref) == 2
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r.float(), atol=1e-5, rtol=1e-5)


_FRESH_INTERPRETER_CHECK = """
import sys, torch
import hizoo
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
assert type(model).__name__ == "HizooForCausalLM", type(model)
expected = torch.load(sys.argv[2], weights_only=True)
with torch.no_grad():
    logits = model(expected["ids"]).logits
torch.testing.assert_close(logits, expected["logits"], atol=1e-4, rtol=1e-4)
print("fresh-interpreter logits match")
"""


@pytest.mark.slow  # a fresh interpreter (the converter's command line)
def test_save_and_load_in_fresh_interpreter(tmp_path):
    olmoe = _random_olmoe(seed=1)
    ours = HizooForCausalLM.from_olmoe(olmoe)
    ours.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "model.safetensors").is_file()
    ids = torch.randint(0, 128, (2, 10))
    with torch.no_grad():
        torch.save({"ids": ids, "logits": olmoe(ids).logits}, tmp_path / "expected.pt")
    result = subprocess.run(
        [sys.executable, "-c", _FRESH_INTERPRETER_CHECK, str(tmp_path / "model"), str(tmp_path / "expected.pt")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "logits match" in result.stdout


@pytest.mark.slow  # a fresh interpreter (the converter's command line)
def test_cli_converts_a_checkpoint_directory(tmp_path):
    olmoe = _random_olmoe(seed=2, tie_word_embeddings=True)
    olmoe.save_pretrained(tmp_path / "olmoe")
    result = subprocess.run(
        [sys.executable, "-m", "hizoo.models.convert_olmoe", str(tmp_path / "olmoe"), str(tmp_path / "hizoo")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hizoo").eval()
    assert loaded.config.tie_word_embeddings
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    ids = torch.randint(0, 128, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, olmoe(ids).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.slow  # a fresh interpreter (the converter's command line)
def test_cli_rejects_a_directory_without_config(tmp_path):
    result = subprocess.run([sys.executable, "-m", "hizoo.models.convert_olmoe", str(tmp_path), str(tmp_path / "o")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "no config.json" in result.stderr


def test_unsupported_olmoe_option_is_rejected():
    olmoe = _random_olmoe(clip_qkv=8.0)
    with pytest.raises(ValueError, match="clip_qkv=8.0"):
        HizooForCausalLM.from_olmoe(olmoe)
