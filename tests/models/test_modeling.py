"""HizooForCausalLM: generation with and without the KV cache, left padding, gradient checkpointing,
weight initialization, save/load through the Auto classes, and bad input."""

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM

import hizoo  # noqa: F401  (registers the Auto classes)
from hizoo import HizooConfig, HizooForCausalLM, HizooModel

TINY = dict(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=96, qk_norm=True, pad_token_id=0)
TINY_MOE = dict(TINY, ffn="moe", num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, num_dense_layers=1,
                experts_backend="eager")


def _model(seed=0, **overrides) -> HizooForCausalLM:
    torch.manual_seed(seed)
    model = HizooForCausalLM(HizooConfig(**{**TINY, **overrides})).eval()
    with torch.no_grad():  # larger weights than the init so greedy decoding is not a near-tie everywhere
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.15)
    return model


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_greedy_generation_same_with_and_without_cache(kind):
    model = _model(**(TINY_MOE if kind == "moe" else {}))
    prompt = torch.randint(1, 97, (2, 7))
    with_cache = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=True)
    without_cache = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=False)
    assert with_cache.shape == (2, 19)
    assert torch.equal(with_cache, without_cache)


def test_cached_logits_equal_full_forward():
    model = _model()
    ids = torch.randint(1, 97, (2, 10))
    with torch.no_grad():
        full = model(ids).logits
        first = model(ids[:, :6], use_cache=True)
        step = model(ids[:, 6:], cache=first.cache, use_cache=True)
    torch.testing.assert_close(step.logits, full[:, 6:], atol=1e-5, rtol=1e-5)


def test_batched_left_padded_generation_matches_per_sample():
    model = _model(seed=1, **TINY_MOE)
    prompts = [torch.randint(1, 97, (n,)) for n in (3, 8, 5)]
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = p
        mask[row, width - len(p):] = 1
    batched = model.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0)
    for row, p in enumerate(prompts):
        single = model.generate(p[None], max_new_tokens=10, do_sample=False, pad_token_id=0)
        assert torch.equal(batched[row, width:], single[0, len(p):]), f"row {row} differs"


def test_sampling_is_seeded_and_respects_length():
    model = _model()
    prompt = torch.randint(1, 97, (3, 4))
    torch.manual_seed(7)
    a = model.generate(prompt, max_new_tokens=9, do_sample=True, top_k=20, temperature=0.9)
    torch.manual_seed(7)
    b = model.generate(prompt, max_new_tokens=9, do_sample=True, top_k=20, temperature=0.9)
    assert a.shape == (3, 13) and torch.equal(a, b)
    assert ((a >= 0) & (a < 97)).all()


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_gradient_checkpointing_gives_the_same_gradients(kind):
    overrides = TINY_MOE if kind == "moe" else {}
    ids = torch.randint(1, 97, (2, 12))
    grads = []
    for checkpointing in (False, True):
        model = _model(seed=3, **overrides).train()
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            assert all(layer.gradient_checkpointing for layer in model.model.layers)
        out = model(ids, labels=ids)
        out.loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == len(list(model.parameters()))
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_init_weights_covers_every_parameter(kind):
    """Poison every parameter, re-run the model's initializer, and check nothing is left poisoned."""
    model = HizooForCausalLM(HizooConfig(**(TINY_MOE if kind == "moe" else TINY)))
    for p in model.parameters():
        p.data.fill_(float("nan"))
        if hasattr(p, "_is_hf_initialized"):
            del p._is_hf_initialized
    model.apply(model._init_weights)
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all(), f"{name} is not initialized by _init_weights"
    std = model.model.layers[0].attn.q_proj.weight.std().item()
    assert abs(std - model.config.initializer_range) < 0.005


def test_moe_loss_includes_aux_losses():
    model = _model(**TINY_MOE)
    ids = torch.randint(1, 97, (2, 9))
    out = model(ids, labels=ids, output_router_logits=True)
    assert set(out.aux_losses) == {"load_balance", "z"}
    assert out.aux_loss > 0
    ce = torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    torch.testing.assert_close(out.loss, ce + out.aux_loss)
    assert len(out.router_logits) == 1 and out.router_logits[0].shape == (18, 8)  # one MoE layer, one dense
    assert out.routing[0] is None and out.routing[1].expert_idx.shape == (18, 2)


def test_save_and_load_with_auto_classes(tmp_path):
    model = _model(**TINY_MOE, tie_word_embeddings=True)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, HizooForCausalLM)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    ids = torch.randint(1, 97, (2, 6))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
    base = AutoModel.from_pretrained(tmp_path)
    assert isinstance(base, HizooModel)


def test_hidden_states_and_inputs_embeds():
    model = _model()
    ids = torch.randint(1, 97, (1, 5))
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        via_embeds = model(inputs_embeds=model.get_input_embeddings()(ids))
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    torch.testing.assert_close(via_embeds.logits, out.logits)


@pytest.mark.parametrize("bad", [97, 500, -1])
def test_out_of_range_token_ids_raise(bad):
    model = _model()
    ids = torch.tensor([[1, 2, bad, 3]])
    with pytest.raises(ValueError, match=rf"vocab_size=97.*\[{bad}\]"):
        model(ids)


def test_bad_attention_mask_shape_raises():
    model = _model()
    ids = torch.randint(1, 97, (1, 4))
    with pytest.raises(ValueError, match="attention_mask must be 2-D"):
        model(ids, attention_mask=torch.ones(1, 4, 4))
    with pytest.raises(ValueError, match=r"prepared 4-D attention_mask must be \[batch=1, heads, seq=4, keys\]"):
        model(ids, attention_mask=torch.ones(1, 1, 3, 4, dtype=torch.bool))


def test_training_forward_builds_no_cache():
    model = _model().train()
    ids = torch.randint(1, 97, (1, 5))
    assert model(ids, labels=ids).cache is None
    assert model.eval()(ids).cache is not None
