"""stream_embedding_scale: the embedding enters every stream multiplied by it (the plain residual's for n = 1);
1.0 leaves the model bit for bit as before; bad values are refused naming the field."""

import math

import pytest
import torch

from hizoo import HizooConfig, HizooForCausalLM

BASE = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
            max_position_embeddings=16)
KINDS = {"plain": {}, "hc_copy": dict(residual="hc", n_streams=2),
         "mhc_lss": dict(residual="mhc", n_streams=3, stream_init="lss"),
         "mhc_lite_rotate": dict(residual="mhc_lite", n_streams=2, stream_init="balanced_rotate")}


def _model(scale: float | None, extra: dict) -> HizooForCausalLM:
    torch.manual_seed(0)
    fields = {**BASE, **extra} if scale is None else {**BASE, **extra, "stream_embedding_scale": scale}
    return HizooForCausalLM(HizooConfig(**fields)).eval()


@pytest.mark.parametrize("kind", KINDS)
def test_scale_one_is_the_unscaled_model_bit_for_bit(kind):
    ids = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(1))
    default, one = _model(None, KINDS[kind]), _model(1.0, KINDS[kind])
    assert HizooConfig(**BASE).stream_embedding_scale == 1.0
    with torch.no_grad():
        assert torch.equal(default(ids).logits, one(ids).logits)


@pytest.mark.parametrize("kind", KINDS)
def test_every_stream_starts_from_the_scaled_embedding(kind):
    """At 0.25 the expansion's output is 0.25 times the unscaled one in every stream (a hand check: the
    expansions are linear in the embedding), and the model's output differs from the unscaled model's."""
    ids = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(1))
    unscaled, scaled = _model(1.0, KINDS[kind]), _model(0.25, KINDS[kind])
    with torch.no_grad():
        x = unscaled.model.embed_tokens(ids)  # [B, S, d]; both models drew the same weights
        assert torch.equal(x, scaled.model.embed_tokens(ids))
        streams, scaled_streams = unscaled.model.expand(x), scaled.model.expand(x)  # [B, S, n, d]
        torch.testing.assert_close(scaled_streams, 0.25 * streams, rtol=1e-6, atol=0)
        if kind == "plain":  # n = 1: the residual's input is 0.25·x itself
            torch.testing.assert_close(scaled_streams[..., 0, :], x / 4, rtol=0, atol=0)
        assert not torch.allclose(scaled(ids).logits, unscaled(ids).logits)


@pytest.mark.parametrize("value", [0.0, -1.0, math.inf, math.nan])
def test_bad_scales_are_refused(value):
    with pytest.raises(ValueError, match="stream_embedding_scale"):
        HizooConfig(**BASE, stream_embedding_scale=value)


def test_the_model_card_states_a_scale_other_than_one(tmp_path):
    HizooForCausalLM(HizooConfig(**BASE, stream_embedding_scale=4.0)).save_pretrained(tmp_path / "scaled")
    HizooForCausalLM(HizooConfig(**BASE)).save_pretrained(tmp_path / "plain")
    assert "multiplied by 4 (stream_embedding_scale)" in (tmp_path / "scaled" / "README.md").read_text()
    assert "stream_embedding_scale" not in (tmp_path / "plain" / "README.md").read_text()
