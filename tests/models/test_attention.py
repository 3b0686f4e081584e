"""Attention through transformers' attention interface and mask utilities: every kernel equals the eager reference
(softmax(QKᵀ/√d + mask)V written out in models/attention.py), with left padding too; eager returns the attention
weights; the static cache generates what the dynamic cache and no cache generate."""

import pytest
import torch

from hizoo import HizooConfig, HizooForCausalLM
from hizoo.models.attention import causal_attention_mask

TINY = dict(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=96, qk_norm=True, pad_token_id=0, ffn="moe", num_experts=8, num_experts_per_tok=2,
            moe_intermediate_size=32, num_dense_layers=1, experts_backend="eager")
STREAMS = dict(TINY, residual="mhc", n_streams=2, router="himoe", n_groups=2)


def _model(seed=0, **overrides) -> HizooForCausalLM:
    torch.manual_seed(seed)
    model = HizooForCausalLM(HizooConfig(**{**TINY, **overrides})).eval()
    with torch.no_grad():  # larger weights than the init so greedy decoding is not a near-tie everywhere
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.15)
    return model


def _left_padded(batch=3, width=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 97, (batch, width), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    mask[1, :1] = 0
    ids[mask == 0] = 0
    return ids, mask


def _forward(model, implementation, ids, mask, **kwargs):
    model.set_attn_implementation(implementation)
    with torch.no_grad():
        return model(ids, attention_mask=mask, **kwargs)


@pytest.mark.parametrize("implementation", ["sdpa", pytest.param("flex_attention", marks=pytest.mark.slow)])
def test_every_kernel_equals_eager_with_left_padding(implementation):
    """All positions, padding ones included (a padding query attends to itself in every kernel), so the routers'
    batch statistics are the same too. flex_attention compiles its kernel on CPU (~15 s)."""
    model = _model()
    ids, mask = _left_padded()
    ref = _forward(model, "eager", ids, mask)
    got = _forward(model, implementation, ids, mask)
    torch.testing.assert_close(got.logits, ref.logits, atol=2e-5, rtol=2e-5)
    for name in ref.aux_losses:
        torch.testing.assert_close(got.aux_losses[name], ref.aux_losses[name], atol=1e-6, rtol=1e-5)
    unpadded = _forward(model, implementation, ids[1:], None)  # and without a mask (SDPA's is_causal path)
    torch.testing.assert_close(unpadded.logits[1], ref.logits[2], atol=2e-5, rtol=2e-5)


def test_eager_returns_the_attention_weights():
    model = _model(attn_implementation="eager")
    ids, mask = _left_padded()
    out = _forward(model, "eager", ids, mask, output_attentions=True)
    assert len(out.attentions) == 2
    w = out.attentions[0]  # [B, H, q, kv]
    assert w.shape == (3, 4, 9, 9)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 4, 9))
    assert (w.triu(diagonal=1) == 0).all()  # causal
    real_queries = mask.bool()[:, None, :, None]
    pad_keys = ~mask.bool()[:, None, None, :]
    assert (w.masked_select(real_queries & pad_keys) == 0).all()  # real tokens never attend to padding
    torch.testing.assert_close(w[0, :, 2, 2], torch.ones(4))  # a padding query attends to itself only
    assert _forward(model, "sdpa", ids, mask).attentions is None  # SDPA computes no weights (transformers' rule)


def test_padding_keeps_every_value_finite_in_training():
    """No NaN at padding positions: the Hi-MoE logit EMA averages every token of the batch, padding included."""
    model = _model(**STREAMS).train()
    ids, mask = _left_padded()
    out = model(ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
    out.loss.backward()
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
    assert all(torch.isfinite(layer.ffn.router.logit_ema).all() for layer in model.model.layers if layer.is_moe)


def test_a_prepared_mask_gives_the_same_logits_as_the_2d_mask():
    model = _model()
    ids, mask = _left_padded()
    embeds = model.get_input_embeddings()(ids)
    for implementation in ("sdpa", "eager"):
        model.set_attn_implementation(implementation)
        prepared = causal_attention_mask(model.config, embeds, mask, None)
        assert prepared.shape == (3, 1, 9, 9)
        with torch.no_grad():
            torch.testing.assert_close(model(ids, attention_mask=prepared, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits,
                                       model(ids, attention_mask=mask).logits)


@pytest.mark.parametrize("config", [TINY, STREAMS], ids=["moe", "mhc+himoe"])
def test_static_cache_generates_what_the_dynamic_cache_and_no_cache_generate(config):
    model = _model(seed=2, **config)
    ids, mask = _left_padded(seed=3)
    kwargs = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    dynamic = model.generate(ids, **kwargs)
    static = model.generate(ids, cache_implementation="static", **kwargs)
    uncached = model.generate(ids, use_cache=False, **kwargs)
    assert dynamic.shape == (3, 17)
    assert torch.equal(static, dynamic) and torch.equal(uncached, dynamic)


def test_static_cache_logits_equal_the_full_forward():
    from transformers import StaticCache

    model = _model()
    ids = torch.randint(1, 97, (2, 10))
    cache = StaticCache(config=model.config, max_cache_len=16)
    with torch.no_grad():
        full = model(ids).logits
        first = model(ids[:, :6], cache=cache, use_cache=True)
        step = model(ids[:, 6:], cache=first.cache, use_cache=True)
    assert first.cache is cache
    torch.testing.assert_close(first.logits, full[:, :6], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(step.logits, full[:, 6:], atol=1e-5, rtol=1e-5)


def test_from_pretrained_attn_implementation_eager_runs_eager(tmp_path):
    from transformers import AutoModelForCausalLM

    _model().save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert model.config._attn_implementation == "eager"
    ids = torch.randint(1, 97, (1, 6))
    with torch.no_grad():
        out = model(ids, output_attentions=True)
    assert len(out.attentions) == 2 and out.attentions[1].shape == (1, 4, 6, 6)
