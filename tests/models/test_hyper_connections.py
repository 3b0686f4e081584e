"""models/hyper_connections.py: one connection class per residual kind, and the streams through the whole model:
save/load, generation, gradients, diagnostics, bfloat16. (Each class has its own test file: test_stream_connection.py,
test_hc.py, test_mhc.py; test_hyper_connections_fixture.py pins the numbers and state-dict keys of every kind.)"""

import pytest
import torch
from transformers import AutoModelForCausalLM

import hizoo  # noqa: F401  (registers the Auto classes)
from hizoo import HizooConfig, HizooForCausalLM
from hizoo.models.hyper_connections import CONNECTIONS, ResidualStreams, residual_streams

TINY = dict(vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)


def _model(seed=0, **overrides) -> HizooForCausalLM:
    torch.manual_seed(seed)
    return HizooForCausalLM(HizooConfig(**{**TINY, **overrides})).eval()


def _ids(seed=1, shape=(2, 9)):
    return torch.randint(0, TINY["vocab_size"], shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------- one class per kind


@pytest.mark.parametrize("overrides, name", [
    (dict(), "PlainResidual"),
    (dict(residual="hc", n_streams=2, hc_dynamic=False), "HyperConnection"),
    (dict(residual="hc", n_streams=2, hc_dynamic=True), "DynamicHyperConnection"),
    (dict(residual="mhc", n_streams=2), "ManifoldHyperConnection"),
    (dict(residual="mhc_lite", n_streams=2), "ManifoldHyperConnectionLite"),
])
def test_each_kind_builds_its_class(overrides, name):
    model = _model(**overrides)
    for layer in model.model.layers:
        for conn in (layer.attn_conn, layer.ffn_conn):
            assert type(conn).__name__ == name and isinstance(conn, ResidualStreams)
            assert conn.kind == overrides.get("residual", "none")
    assert set(CONNECTIONS) == {"none", "hc", "mhc", "mhc_lite"}
    conn = residual_streams(HizooConfig(**TINY, **overrides), 1, "ffn")
    assert (conn.layer_idx, conn.branch, conn.index) == (1, "ffn", 3)


# ---------------------------------------------------------------------------------------------- model-level


@pytest.mark.parametrize("overrides", [
    dict(residual="hc", n_streams=3, hc_dynamic=True, stream_init="lss"),
    dict(residual="mhc", n_streams=2, stream_init="rotate"),
    dict(residual="mhc_lite", n_streams=3, stream_init="split"),
])
def test_save_and_auto_load_round_trip(tmp_path, overrides):
    model = _model(**overrides)
    with torch.no_grad():  # move every parameter off its init so a re-initialization would show
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, HizooForCausalLM)
    for (name, p), (name2, q) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert name == name2 and torch.equal(p, q), name
    if "lss" in overrides.values():
        assert torch.equal(loaded.model.expand.stream_scale, model.model.expand.stream_scale)
    ids = _ids()
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


@pytest.mark.parametrize("overrides", [
    dict(residual="hc", n_streams=4, hc_dynamic=True, stream_init="perturb"),
    dict(residual="mhc", n_streams=4, stream_init="lss"),
])
def test_cached_and_uncached_greedy_generation_agree(overrides):
    model = _model(**overrides)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.15)
    prompt = _ids(shape=(2, 5))
    a = model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True)
    b = model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False)
    assert a.shape == (2, 13) and torch.equal(a, b)

@pytest.mark.parametrize("overrides", [
    dict(residual="hc", n_streams=4, hc_dynamic=True, stream_init="lss"),
    dict(residual="mhc", n_streams=3, stream_init="rotate"),
    dict(residual="mhc_lite", n_streams=3, stream_init="split", hc_recompute=True),
])
def test_gradients_reach_every_connection_parameter(overrides):
    """At init W = φ = 0, so s and α get zero gradient (as in the papers); after one SGD step every one moves."""
    model = _model(**overrides).train()
    ids = _ids()
    names = [n for n, _ in model.named_parameters() if "_conn." in n or ".expand." in n]
    assert names
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(2):
        opt.zero_grad()
        model(ids, labels=ids).loss.backward()
        opt.step()
    grads = dict(model.named_parameters())
    dead = [n for n in names if grads[n].grad is None or not grads[n].grad.abs().sum() > 0]
    assert not dead, dead

@pytest.mark.parametrize("kwargs, field", [
    (dict(residual="hc", n_streams=0), "n_streams=0"),
    (dict(residual="hc", n_streams=-2), "n_streams=-2"),
    (dict(residual="hc", n_streams=2, stream_init="shuffle"), "stream_init='shuffle'"),
    (dict(residual="mhc", n_streams=1), "n_streams=1"),
    (dict(residual="mhc_lite", n_streams=1), "n_streams=1"),
    (dict(residual="mhc_lite", n_streams=7), "n_streams=7"),
    (dict(residual="none", stream_init="lss"), "stream_init='lss'"),
    (dict(residual="hc", n_streams=2, hc_dynamic="yes"), "hc_dynamic='yes'"),
    (dict(residual="mhc", n_streams=2, mhc_sinkhorn_iters=0), "mhc_sinkhorn_iters=0"),
])
def test_bad_values_raise_clear_errors(kwargs, field):
    with pytest.raises(ValueError) as err:
        HizooConfig(**TINY, **kwargs)
    assert field in str(err.value)
    if "shuffle" in field:
        assert "'lss'" in str(err.value) and "'rotate'" in str(err.value)  # lists what is allowed

@pytest.mark.parametrize("overrides, shapes", [
    (dict(), {}),
    (dict(residual="hc", n_streams=3, hc_dynamic=False), {"read": (3,), "write": (3,), "mix": (3, 3)}),
    (dict(residual="hc", n_streams=3, hc_dynamic=True), {"read": (2, 9, 3), "write": (2, 9, 3), "mix": (2, 9, 3, 3)}),
    (dict(residual="mhc", n_streams=3),
     {"read": (2, 9, 3), "write": (2, 9, 3), "mix": (2, 9, 3, 3), "mix_logits": (2, 9, 3, 3)}),
    (dict(residual="mhc_lite", n_streams=3),
     {"read": (2, 9, 3), "write": (2, 9, 3), "mix": (2, 9, 3, 3), "mix_logits": (2, 9, 6)}),
])
def test_diagnostics_context_contract(overrides, shapes):
    model = _model(**overrides)
    with torch.no_grad():
        out = model(_ids(), output_diagnostics=True)
    for layer in out.diagnostics:
        for branch in ("attn", "ffn"):
            assert {k: tuple(v.shape) for k, v in layer[branch].items()} == shapes
        assert layer["streams"].shape == (2, 9, overrides.get("n_streams", 1), TINY["hidden_size"])


@pytest.mark.parametrize("residual", ["hc", "mhc"])
def test_bfloat16_training_step(residual):
    model = _model(residual=residual, n_streams=4, hc_dynamic=True, stream_init="lss").to(torch.bfloat16).train()
    ids = _ids()
    out = model(ids, labels=ids, output_diagnostics=True)
    out.loss.backward()
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)
    assert out.diagnostics[0]["attn"]["mix"].dtype == torch.float32  # coefficients are computed in fp32
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
