"""models/hc.py: static and dynamic hyper-connections on the paper's formulas with hand-checked numbers, and against
the plain residual they reduce to at one stream or at a copy init."""

import pytest
import torch

from hizoo import HizooConfig, HizooForCausalLM
from hizoo.models.hc import DynamicHyperConnection, HyperConnection
from hizoo.models.hyper_connections import residual_streams

TINY = dict(vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)


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
    return residual_streams(config, layer_idx, branch)


@pytest.mark.parametrize("dynamic, cls", [(False, HyperConnection), (True, DynamicHyperConnection)])
def test_hc_dynamic_picks_the_class(dynamic, cls):
    conn = _conn(hc_dynamic=dynamic)
    assert type(conn) is cls and conn.kind == "hc"
    dynamic_names = {"dynamic_proj", "dynamic_write_proj", "dynamic_scale", "norm_gain"}
    assert (dynamic_names <= {n for n, _ in conn.named_parameters()}) == dynamic


def test_cyclic_start_reads_stream_two_layers_plus_branch():
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
