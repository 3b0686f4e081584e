"""Residual streams: HC (static, dynamic), mHC, mHC-lite and the stream initializations, against the plain
residual, the papers' formulas on hand-checked numbers, and through save/load and generation."""


import pytest
import torch
from transformers import AutoModelForCausalLM

import hizoo  # noqa: F401  (registers the Auto classes)
from hizoo import HizooConfig, HizooForCausalLM
from hizoo.models.hyper_connections import ResidualStreams, connection_index

TINY = dict(vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)
SYMMETRY_BREAKING = ("lss", "rotate", "split", "perturb", "balanced_rotate")


def _model(seed=0, **overrides) -> HizooForCausalLM:
    torch.manual_seed(seed)
    return HizooForCausalLM(HizooConfig(**{**TINY, **overrides})).eval()


def _ids(seed=1, shape=(2, 9)):
    return torch.randint(0, TINY["vocab_size"], shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------- plain residual


@pytest.mark.parametrize("dynamic", [False, True])
def test_one_stream_hc_is_exactly_the_plain_residual(dynamic):
    plain = _model()
    hc = HizooForCausalLM(HizooConfig(**TINY, residual="hc", n_streams=1, hc_dynamic=dynamic)).eval()
    missing, unexpected = hc.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all("_conn." in k for k in missing) and missing  # only the HC parameters are new
    ids = _ids()
    with torch.no_grad():
        assert torch.equal(hc(ids).logits, plain(ids).logits)


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("reduce", ["norm_sum", "sum_norm"])
def test_hc_with_copy_init_keeps_n_copies_of_the_plain_residual(dynamic, reduce):
    """At init (A_r = I, B = 1, W = 0, whichever stream is read) every stream stays a copy of the plain model's
    residual x. The output then differs by the reduction: norm_sum gives Σ_s norm(x) = n·norm(x), so the logits
    are n times the plain model's (same argmax, softmax at temperature 1/n); sum_norm gives norm(n·x) = norm(x)
    up to the norm's eps, which sees n² times the mean square (a tiny eps makes that invisible)."""
    n = 4
    plain = _model(rms_norm_eps=1e-12)
    config = HizooConfig(**TINY, residual="hc", n_streams=n, hc_dynamic=dynamic, rms_norm_eps=1e-12,
                         stream_reduce=reduce)
    hc = HizooForCausalLM(config).eval()
    hc.load_state_dict(plain.state_dict(), strict=False)
    ids = _ids()
    with torch.no_grad():
        out = hc(ids, output_diagnostics=True, output_hidden_states=True)
        ref = plain(ids, output_hidden_states=True)
    factor = n if reduce == "norm_sum" else 1
    torch.testing.assert_close(out.logits, factor * ref.logits, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(out.logits, (n + 1 - factor) * ref.logits, atol=1e-3)  # the other form is far off
    streams = out.diagnostics[-1]["streams"]  # [B, S, 4, d]
    assert torch.equal(streams, streams[..., :1, :].expand_as(streams))
    # hidden states: the summed residual entering each layer (n copies of x), then what lm_head reads
    for mine, theirs in zip(out.hidden_states[:-1], ref.hidden_states[:-1]):
        torch.testing.assert_close(mine, n * theirs, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.hidden_states[-1], factor * ref.hidden_states[-1], atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------- HC formulas


def _conn(layer_idx=0, branch="attn", **overrides):
    """A connection whose starting stream is the cyclic k = (2·layer + branch) mod n, for hand-made examples."""
    config = HizooConfig(**{**TINY, "residual": "hc", "n_streams": 3, "stream_start": "cyclic", **overrides})
    return ResidualStreams(config, layer_idx, branch)


def test_connection_index_counts_both_branches():
    assert [connection_index(i, b) for i in range(3) for b in ("attn", "ffn")] == [0, 1, 2, 3, 4, 5]
    # n = 3: block 1's attention is connection 2 and reads stream 2; its FFN (connection 3) reads stream 0
    assert torch.equal(_conn(1, "attn").static_read.detach(), torch.tensor([0.0, 0.0, 1.0]))
    assert torch.equal(_conn(1, "ffn").static_read.detach(), torch.tensor([1.0, 0.0, 0.0]))


@pytest.mark.parametrize("dynamic", [False, True])
def test_static_hc_at_init_is_the_paper_formula(dynamic):
    """A_m = e_{k mod n}, A_r = I, B = 1 (Eq. 14): h = H_k and Ĥ_j = F(h) + H_j."""
    conn = _conn(1, "attn", hc_dynamic=dynamic, hidden_size=2, num_attention_heads=1)  # k = 2
    H = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 4.0]]).expand(1, 1, 3, 2)  # [B=1, S=1, n=3, d=2]
    h, ctx = conn.read(H)
    assert torch.equal(h, torch.tensor([[[0.5, 4.0]]]))  # A_mᵀ H = H_3
    out = conn.write(H, torch.tensor([[[10.0, 20.0]]]), ctx)
    assert torch.equal(out[0, 0], torch.tensor([[11.0, 22.0], [13.0, 19.0], [10.5, 24.0]]))  # F + H_j


def test_hc_mixing_matches_hand_computed_example():
    """Non-trivial A_m, A_r, B: h = Σ_i A_m[i] H_i, Ĥ_j = B_j F + Σ_i A_r[i, j] H_i (Eqs. 2–5)."""
    conn = _conn(hidden_size=2, num_attention_heads=1, n_streams=2, hc_dynamic=False)
    with torch.no_grad():
        conn.static_read.copy_(torch.tensor([0.5, 2.0]))
        conn.static_mix.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))  # A_r[i, j]: input i -> output j
        conn.static_write.copy_(torch.tensor([1.0, -1.0]))
    H = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])  # H_1 = e_1, H_2 = e_2
    h, ctx = conn.read(H)
    assert torch.equal(h, torch.tensor([[[0.5, 2.0]]]))
    out = conn.write(H, torch.tensor([[[1.0, 1.0]]]), ctx)
    # Ĥ_1 = 1·F + 1·H_1 + 3·H_2 = [2, 4]; Ĥ_2 = −1·F + 2·H_1 + 4·H_2 = [1, 3]
    assert torch.equal(out[0, 0], torch.tensor([[2.0, 4.0], [1.0, 3.0]]))
    assert ctx["mix"] is conn.static_mix and ctx["read"] is conn.static_read and ctx["write"] is conn.static_write


def test_dynamic_hc_formula():
    """A_m = A_m⁰ + s_α tanh(H̄ W_m), A_r = A_r⁰ + s_α tanh(H̄ W_r), B = B⁰ + s_β tanh(H̄ W_β)ᵀ
    (Eqs. 10–13), H̄ = H_i / ‖H_i‖ · √d ⊙ (1 + γ) per stream (the official code's RMSNorm)."""
    conn = _conn(n_streams=3, hc_dynamic=True)
    torch.manual_seed(0)
    with torch.no_grad():
        conn.dynamic_proj.normal_()
        conn.dynamic_write_proj.normal_()
        conn.norm_gain.normal_(std=0.5)
        conn.dynamic_scale.copy_(torch.tensor([0.3, 0.7]))
    H = torch.randn(2, 5, 3, 32)
    h, ctx = conn.read(H)
    Hbar = H / H.norm(dim=-1, keepdim=True) * 32 ** 0.5 * (1 + conn.norm_gain.detach())
    W = conn.dynamic_proj.detach().T  # [d, n + 1] = [W_m | W_r]
    A_m = conn.static_read.detach() + 0.3 * torch.tanh(Hbar @ W[:, :1]).squeeze(-1)
    A_r = conn.static_mix.detach() + 0.3 * torch.tanh(Hbar @ W[:, 1:4])
    B = conn.static_write.detach() + 0.7 * torch.tanh(Hbar @ conn.dynamic_write_proj.detach())
    torch.testing.assert_close(ctx["read"], A_m)
    torch.testing.assert_close(ctx["mix"], A_r)
    torch.testing.assert_close(ctx["write"], B)
    torch.testing.assert_close(h, torch.einsum("bsi,bsid->bsd", A_m, H))
    F = torch.randn(2, 5, 32)
    out = conn.write(H, F, ctx)
    torch.testing.assert_close(out, torch.einsum("bsij,bsid->bsjd", A_r, H) + B[..., None] * F[..., None, :])


# ---------------------------------------------------------------------------------------------- mHC


@pytest.mark.parametrize("shared", [False, True])
def test_stream_mixing_gradients(shared):
    """The hand-written backward of read/write against finite differences, per-token and shared weights."""
    from hizoo.models.hyper_connections import read_streams, write_streams

    g = torch.Generator().manual_seed(0)
    H = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=g).requires_grad_()
    F = torch.randn(2, 3, 5, dtype=torch.float64, generator=g).requires_grad_()
    lead = () if shared else (2, 3)
    r, w = (torch.randn(*lead, 4, dtype=torch.float64, generator=g).requires_grad_() for _ in range(2))
    M = torch.randn(*lead, 4, 4, dtype=torch.float64, generator=g).requires_grad_()
    assert torch.autograd.gradcheck(read_streams, (H, r))
    assert torch.autograd.gradcheck(write_streams, (H, F, M, w))
    tok = "" if shared else "bs"
    torch.testing.assert_close(read_streams(H, r), torch.einsum(f"{tok}i,bsid->bsd", r, H))
    torch.testing.assert_close(write_streams(H, F, M, w),
                               torch.einsum(f"{tok}ij,bsid->bsjd", M, H) + w[..., None] * F[..., None, :])


@pytest.mark.parametrize("kind", ["mhc", "mhc_lite"])
def test_mhc_coefficients_on_random_inputs(kind):
    config = HizooConfig(**TINY, residual=kind, n_streams=4)
    conn = ResidualStreams(config, layer_idx=0, branch="ffn")
    H = torch.randn(3, 7, 4, 32) * 5
    _, ctx = conn.read(H)  # at init (φ = 0) H_res is the same converged matrix for every token
    torch.testing.assert_close(ctx["mix"].sum(-1), torch.ones(3, 7, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(ctx["mix"].sum(-2), torch.ones(3, 7, 4), atol=1e-5, rtol=0)
    torch.manual_seed(0)
    with torch.no_grad():
        conn.proj.normal_(std=1.0)  # token-dependent logits around the near-identity bias
    h, ctx = conn.read(H)
    mix = ctx["mix"]  # [3, 7, 4, 4]
    # mhc_lite is exact; Sinkhorn's last normalization (over outputs j) is exact, the input axis within the
    # residual of 20 iterations on near-identity logits (slow convergence of nearly decomposable matrices)
    torch.testing.assert_close(mix.sum(-1), torch.ones(3, 7, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(mix.sum(-2), torch.ones(3, 7, 4), atol=1e-5 if kind == "mhc_lite" else 1e-3, rtol=0)
    assert (mix >= 0).all() and ctx["mix_logits"].std(dim=(0, 1)).max() > 0.01  # the mixing varies per token
    assert ((ctx["read"] > 0) & (ctx["read"] < 1)).all() and ((ctx["write"] > 0) & (ctx["write"] < 2)).all()
    assert ctx["mix_logits"].shape == ((3, 7, 4, 4) if kind == "mhc" else (3, 7, 24))
    # x_{l+1} = H_res x_l + H_postᵀ F(H_pre x_l) (Eq. 3) with H_res[out, in] = mix[in, out]
    torch.testing.assert_close(h, torch.einsum("bsi,bsid->bsd", ctx["read"], H))
    F = torch.randn(3, 7, 32)
    expected = torch.einsum("bsji,bsid->bsjd", mix.transpose(-1, -2), H) + ctx["write"][..., None] * F[..., None, :]
    torch.testing.assert_close(conn.write(H, F, ctx), expected)


def test_mhc_coefficients_follow_eq7_with_rmsnorm_over_all_streams():
    config = HizooConfig(**{**TINY, "hidden_size": 8, "num_attention_heads": 2}, residual="mhc", n_streams=2,
                         stream_start="cyclic")
    conn = ResidualStreams(config, layer_idx=0, branch="attn")
    torch.manual_seed(3)
    with torch.no_grad():
        conn.proj.normal_()
        conn.norm_gain.normal_(std=0.5)
        conn.alpha.copy_(torch.tensor([0.2, 0.3, 0.4]))
    H = torch.randn(1, 2, 2, 8)
    _, ctx = conn.read(H)
    x = H.flatten(-2)
    x = x / x.pow(2).mean(-1, keepdim=True).sqrt() * (1 + conn.norm_gain.detach())  # RMSNorm over nC = 16 values
    z = x @ conn.proj.detach().T  # x⃗' [φ_pre | φ_post | φ_res]
    torch.testing.assert_close(ctx["read"], torch.sigmoid(0.2 * z[..., :2] + torch.tensor([1.0, -1.0])))
    torch.testing.assert_close(ctx["write"], 2 * torch.sigmoid(0.3 * z[..., 2:4] + torch.tensor([1.0, -1.0])))
    torch.testing.assert_close(ctx["mix_logits"], 0.4 * z[..., 4:].unflatten(-1, (2, 2)) + conn.res_bias.detach())


def test_mhc_init_matches_design():
    conn = ResidualStreams(HizooConfig(**TINY, residual="mhc", n_streams=4, stream_start="cyclic"),
                           layer_idx=1, branch="ffn")  # k = 3
    assert torch.equal(conn.pre_bias.detach(), torch.tensor([-1.0, -1.0, -1.0, 1.0]))
    assert torch.equal(conn.post_bias.detach(), conn.pre_bias.detach())
    _, ctx = conn.read(torch.randn(1, 2, 4, 32))
    assert (ctx["mix"].diagonal(dim1=-2, dim2=-1) > 0.998).all()  # H_res ≈ I
    torch.testing.assert_close(ctx["read"][0, 0], torch.sigmoid(torch.tensor([-1.0, -1.0, -1.0, 1.0])))
    lite = ResidualStreams(HizooConfig(**TINY, residual="mhc_lite", n_streams=3), layer_idx=0, branch="attn")
    assert lite.res_bias[0] == 0 and (lite.res_bias[1:] == -8).all()


# ---------------------------------------------------------------------------------------------- stream init


@pytest.mark.parametrize("residual", ["hc", "mhc"])
@pytest.mark.parametrize("stream_init", ("copy",) + SYMMETRY_BREAKING)
def test_only_copy_keeps_streams_interchangeable_at_init(residual, stream_init):
    """Permuting the streams entering block 1 changes the output unless every stream is the same (copy)."""
    model = _model(residual=residual, n_streams=4, stream_init=stream_init, hc_dynamic=True)
    ids = _ids()
    with torch.no_grad():
        ref = model(ids).logits
        hook = model.model.layers[1].register_forward_pre_hook(
            lambda module, args: (args[0][..., [1, 2, 3, 0], :], *args[1:]))
        permuted = model(ids).logits
        hook.remove()
    if stream_init == "copy" and residual == "hc":
        assert torch.equal(permuted, ref)
    elif stream_init != "copy":
        assert not torch.allclose(permuted, ref, atol=1e-4)


def test_perturb_perturbs_the_connections():
    base = _model(residual="hc", n_streams=4).model.layers[0].attn_conn
    pert = _model(residual="hc", n_streams=4, stream_init="perturb").model.layers[0].attn_conn
    assert torch.equal(base.static_mix.detach(), torch.eye(4))
    delta = pert.static_mix.detach() - torch.eye(4)
    assert 0.02 < delta.std() < 0.3


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


@pytest.mark.parametrize("residual", ["hc", "mhc"])
def test_recompute_gives_the_same_gradients(residual):
    ids = _ids()
    grads = []
    for recompute in (False, True):
        model = _model(residual=residual, n_streams=4, hc_dynamic=True, stream_init="lss",
                       hc_recompute=recompute).train()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "_conn." in name:
                    p.add_(torch.randn_like(p) * 0.1)
        model(ids, labels=ids).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-6, rtol=1e-5, msg=name)


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
