"""models/mhc.py: mHC and mHC-lite coefficients (Eqs. 3, 7, 8) on random and hand-made inputs, and their init."""

import pytest
import torch

from hizoo import HizooConfig
from hizoo.models.hyper_connections import residual_streams
from hizoo.models.mhc import ManifoldHyperConnection, ManifoldHyperConnectionLite

TINY = dict(vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)


@pytest.mark.parametrize("kind, cls", [("mhc", ManifoldHyperConnection), ("mhc_lite", ManifoldHyperConnectionLite)])
def test_residual_picks_the_class(kind, cls):
    conn = residual_streams(HizooConfig(**TINY, residual=kind, n_streams=3), layer_idx=0, branch="attn")
    assert type(conn) is cls and conn.kind == kind
    assert conn.res_bias.shape == ((3, 3) if kind == "mhc" else (6,))  # n² or n! res logits
    assert conn.proj.shape == (2 * 3 + conn.res_bias.numel(), 3 * 32)  # [φ_pre | φ_post | φ_res]ᵀ over n·d


@pytest.mark.parametrize("kind", ["mhc", "mhc_lite"])
def test_mhc_coefficients_on_random_inputs(kind):
    config = HizooConfig(**TINY, residual=kind, n_streams=4)
    conn = residual_streams(config, layer_idx=0, branch="ffn")
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
    conn = residual_streams(config, layer_idx=0, branch="attn")
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
    conn = residual_streams(HizooConfig(**TINY, residual="mhc", n_streams=4, stream_start="cyclic"),
                           layer_idx=1, branch="ffn")  # k = 3
    assert torch.equal(conn.pre_bias.detach(), torch.tensor([-1.0, -1.0, -1.0, 1.0]))
    assert torch.equal(conn.post_bias.detach(), conn.pre_bias.detach())
    _, ctx = conn.read(torch.randn(1, 2, 4, 32))
    assert (ctx["mix"].diagonal(dim1=-2, dim2=-1) > 0.998).all()  # H_res ≈ I
    torch.testing.assert_close(ctx["read"][0, 0], torch.sigmoid(torch.tensor([-1.0, -1.0, -1.0, 1.0])))
    lite = residual_streams(HizooConfig(**TINY, residual="mhc_lite", n_streams=3), layer_idx=0, branch="attn")
    assert lite.res_bias[0] == 0 and (lite.res_bias[1:] == -8).all()
