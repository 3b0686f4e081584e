"""Residual streams as the official stream-collapse code defines them, on hand-computed values: the output
reduction, Sinkhorn's order, the coefficient norm, the starting stream of each connection, LSS; and the
balanced-rotation init's exact norms. (bench/reference_streams.py runs the official modules themselves.)"""

import math
import random

import pytest
import torch
from torch import nn

from hizoo import HizooConfig, HizooForCausalLM
from hizoo.models.hyper_connections import connection_index, residual_streams
from hizoo.models.modeling import RMSNorm
from hizoo.models.stream_init import StreamExpansion, reduce_streams

TINY = dict(vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)
SMALL = dict(TINY, hidden_size=2, num_attention_heads=1)  # d = 2: every number below is checked by hand


def _ids(shape=(2, 9)):
    return torch.randint(0, TINY["vocab_size"], shape, generator=torch.Generator().manual_seed(1))


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


# ---------------------------------------------------------------------------------------------- output reduction


def test_reduce_streams_by_hand():
    """H_1 = [3, 4] (mean square 12.5), H_2 = [1, −1] (mean square 1), norm gain w = [1, 2]."""
    norm = RMSNorm(2, eps=1e-12)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0]))
    H = torch.tensor([[3.0, 4.0], [1.0, -1.0]])[None, None]  # [B=1, S=1, n=2, d=2]
    r = math.sqrt(12.5)
    norm_sum = torch.tensor([3 / r + 1, 2 * (4 / r - 1)])  # Σ_s w ⊙ H_s / rms(H_s)
    sum_norm = torch.tensor([4 / r, 2 * 3 / r])  # w ⊙ (H_1 + H_2) / rms([4, 3])
    torch.testing.assert_close(reduce_streams(H, norm, "norm_sum")[0, 0], norm_sum)
    torch.testing.assert_close(reduce_streams(H, norm, "sum_norm")[0, 0], sum_norm)
    torch.testing.assert_close(reduce_streams(H, norm)[0, 0], norm_sum)  # the default
    one = H[..., :1, :]  # n = 1: both are norm(H), the plain model's final norm
    assert torch.equal(reduce_streams(one, norm, "norm_sum"), norm(one[..., 0, :]))
    assert torch.equal(reduce_streams(one, norm, "sum_norm"), norm(one[..., 0, :]))
    with pytest.raises(ValueError, match="stream_reduce='mean'"):
        reduce_streams(H, norm, "mean")


@pytest.mark.parametrize("reduce", ["norm_sum", "sum_norm"])
def test_one_stream_model_is_the_plain_model_under_both_reductions(reduce):
    torch.manual_seed(0)
    plain = HizooForCausalLM(HizooConfig(**TINY)).eval()
    one = HizooForCausalLM(HizooConfig(**TINY, residual="hc", n_streams=1, hc_dynamic=True,
                                       stream_reduce=reduce)).eval()
    one.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():
        assert torch.equal(one(_ids()).logits, plain(_ids()).logits)


@pytest.mark.parametrize("reduce", ["norm_sum", "sum_norm"])
def test_model_logits_are_lm_head_of_the_reduction(reduce):
    torch.manual_seed(0)
    model = HizooForCausalLM(HizooConfig(**TINY, residual="mhc", n_streams=3, stream_init="lss",
                                         stream_reduce=reduce)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        out = model(_ids(), output_diagnostics=True, output_hidden_states=True)
        H = out.diagnostics[-1]["streams"]  # [B, S, 3, d]
        norm = model.model.norm
        by_hand = norm(H).sum(-2) if reduce == "norm_sum" else norm(H.sum(-2))
        other = norm(H.sum(-2)) if reduce == "norm_sum" else norm(H).sum(-2)
    torch.testing.assert_close(out.logits, model.lm_head(by_hand))
    assert not torch.allclose(out.logits, model.lm_head(other), atol=1e-3)
    torch.testing.assert_close(out.hidden_states[-1], by_hand)
    torch.testing.assert_close(out.hidden_states[-2], out.diagnostics[-2]["streams"].sum(-2))  # entering the last layer


# ---------------------------------------------------------------------------------------------- connections by hand


def test_hc_dynamic_coefficients_by_hand():
    """n = 2, d = 2, H_1 = [3, 4], H_2 = [0, 2]; norm(H_i) = H_i/‖H_i‖·√2 ⊙ (1 + γ) (official RMSNorm, no eps):
    H̄_1 = √2·[0.6, 0.8] ⊙ [1.5, 1] = √2·[0.9, 0.8], H̄_2 = √2·[0, 1]. W_m = [1, 0], W_β = [0, 1], W_r = 0,
    s_α = 0.5, s_β = 0.25, stream k = 0: A_m = [1, 0] + 0.5·tanh([0.9√2, 0]), B = 1 + 0.25·tanh([0.8√2, √2])."""
    conn = residual_streams(HizooConfig(**SMALL, residual="hc", n_streams=2, hc_dynamic=True, stream_start="cyclic"),
                           layer_idx=0, branch="attn")
    with torch.no_grad():
        conn.norm_gain.copy_(torch.tensor([0.5, 0.0]))
        conn.dynamic_proj.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]))  # [W_m | W_r]ᵀ
        conn.dynamic_write_proj.copy_(torch.tensor([0.0, 1.0]))
        conn.dynamic_scale.copy_(torch.tensor([0.5, 0.25]))
    H = torch.tensor([[3.0, 4.0], [0.0, 2.0]])[None, None]
    h, ctx = conn.read(H)
    r2 = math.sqrt(2)
    A_m = torch.tensor([1 + 0.5 * math.tanh(0.9 * r2), 0.5 * math.tanh(0.0)])
    B = torch.tensor([1 + 0.25 * math.tanh(0.8 * r2), 1 + 0.25 * math.tanh(r2)])
    torch.testing.assert_close(ctx["read"][0, 0], A_m)
    torch.testing.assert_close(ctx["write"][0, 0], B)
    torch.testing.assert_close(ctx["mix"][0, 0], torch.eye(2))
    torch.testing.assert_close(h[0, 0], A_m[0] * H[0, 0, 0] + A_m[1] * H[0, 0, 1])


def test_mhc_coefficients_by_hand():
    """n = 2, d = 2, H = ([3, 4], [0, 0]): x⃗ = [3, 4, 0, 0], ‖x⃗‖ = 5, √(nd) = 2, so x⃗' = [1.2, 1.6, 0, 0]
    (γ = 0). φ picks x⃗'_1 for every pre/post logit and x⃗'_2 for H̃_res[0, 1]; α = (0.5, 0.25, 1), stream
    k = 0. H_pre = σ(0.6 + [1, −1]), H_post = 2σ(0.3 + [1, −1]), res logits [[0, −8 + 1.6], [−8, 0]], one
    Sinkhorn iteration over inputs then outputs."""
    config = HizooConfig(**SMALL, residual="mhc", n_streams=2, stream_start="cyclic", mhc_sinkhorn_iters=1)
    conn = residual_streams(config, layer_idx=0, branch="attn")
    proj = torch.zeros(8, 4)
    proj[:4, 0] = 1.0  # φ_pre, φ_post: x⃗'_1
    proj[4 + 1, 1] = 1.0  # φ_res[0, 1]: x⃗'_2
    with torch.no_grad():
        conn.proj.copy_(proj)
        conn.alpha.copy_(torch.tensor([0.5, 0.25, 1.0]))
    H = torch.tensor([[3.0, 4.0], [0.0, 0.0]])[None, None]
    _, ctx = conn.read(H)
    torch.testing.assert_close(ctx["read"][0, 0], torch.tensor([_sigmoid(1.6), _sigmoid(-0.4)]))
    torch.testing.assert_close(ctx["write"][0, 0], torch.tensor([2 * _sigmoid(1.3), 2 * _sigmoid(-0.7)]))
    E = [[1.0, math.exp(-6.4)], [math.exp(-8.0), 1.0]]  # exp(res logits)[i, j]
    cols = [[E[i][j] / (E[0][j] + E[1][j]) for j in range(2)] for i in range(2)]  # over inputs i first
    mix = [[cols[i][j] / (cols[i][0] + cols[i][1]) for j in range(2)] for i in range(2)]  # then over outputs j
    torch.testing.assert_close(ctx["mix"][0, 0], torch.tensor(mix))


def test_mhc_lite_coefficients_by_hand():
    """n = 2: permutations (identity, swap) with logits c = [0, −8] + α_res·x⃗'φ_res; φ_res picks x⃗'_2 = 1.6
    for the swap, α_res = 5: c = [0, 0], so H_res = [[½, ½], [½, ½]]."""
    conn = residual_streams(HizooConfig(**SMALL, residual="mhc_lite", n_streams=2, stream_start="cyclic"),
                           layer_idx=0, branch="ffn")  # stream k = 1
    proj = torch.zeros(6, 4)
    proj[5, 1] = 1.0
    with torch.no_grad():
        conn.proj.copy_(proj)
        conn.alpha.copy_(torch.tensor([0.01, 0.01, 5.0]))
    _, ctx = conn.read(torch.tensor([[3.0, 4.0], [0.0, 0.0]])[None, None])
    torch.testing.assert_close(ctx["mix_logits"][0, 0], torch.tensor([0.0, 0.0]))
    torch.testing.assert_close(ctx["mix"][0, 0], torch.full((2, 2), 0.5))
    torch.testing.assert_close(ctx["read"][0, 0], torch.tensor([_sigmoid(-1.0), _sigmoid(1.0)]))


def test_coefficient_norm_has_no_eps():
    """The official norm is F.normalize(v)·√D: tiny streams are normalized as exactly as large ones (an eps
    inside the root, as RMSNorm's 1e-5, would shrink H̄ for a residual of mean square ~1e-5)."""
    conn = residual_streams(HizooConfig(**SMALL, residual="hc", n_streams=2, hc_dynamic=True, stream_start="cyclic"),
                           layer_idx=0, branch="attn")
    with torch.no_grad():
        conn.dynamic_write_proj.copy_(torch.tensor([1.0, 0.0]))
        conn.dynamic_scale.copy_(torch.tensor([0.0, 1.0]))
    big = torch.tensor([[3.0, 4.0], [3.0, 4.0]])[None, None]
    _, a = conn.read(big)
    _, b = conn.read(big * 1e-4)
    torch.testing.assert_close(a["write"], b["write"], atol=1e-7, rtol=0)
    torch.testing.assert_close(a["write"][0, 0], torch.full((2,), 1 + math.tanh(0.6 * math.sqrt(2))))


# ---------------------------------------------------------------------------------------------- starting stream


def _starts(**overrides):
    config = HizooConfig(**{**TINY, "residual": "hc", "n_streams": 4, "num_hidden_layers": 6, **overrides})
    return [residual_streams(config, i, b).stream for i in range(6) for b in ("attn", "ffn")]


def test_cyclic_start_is_two_layers_plus_branch_mod_n():
    assert _starts(stream_start="cyclic") == [connection_index(i, b) % 4 for i in range(6) for b in ("attn", "ffn")]


def test_random_start_is_seeded_reproducible_and_independent_of_global_rngs():
    torch.manual_seed(0)
    random.seed(0)
    first = _starts()
    torch.manual_seed(123)
    random.seed(123)
    assert _starts() == first == _starts(stream_start_seed=0)  # the default seed; no global RNG involved
    others = [_starts(stream_start_seed=s) for s in range(1, 6)]
    assert any(o != first for o in others)
    drawn = [k for starts in [first, *others] for k in starts]
    assert set(drawn) == {0, 1, 2, 3}  # uniform over the streams: 72 draws hit each of the 4
    assert max(drawn.count(k) for k in range(4)) < 36
    assert first != _starts(stream_start="cyclic")


def test_random_start_sets_the_initial_read_stream():
    torch.manual_seed(0)
    model = HizooForCausalLM(HizooConfig(**TINY, residual="mhc", n_streams=4, stream_start_seed=7))
    for layer in model.model.layers:
        for conn in (layer.attn_conn, layer.ffn_conn):
            expected = -torch.ones(4)
            expected[conn.stream] = 1.0
            assert torch.equal(conn.pre_bias.detach(), expected) and torch.equal(conn.post_bias.detach(), expected)


# ---------------------------------------------------------------------------------------------- LSS


def test_lss_matches_the_official_init_draw_for_draw():
    """The official StreamExpandLSS: λ = xavier_uniform_(empty(n, d)) + lss_init (0.6), applied as x ⊙ λ_s to the
    embedding before layer 0. Same seed, same draws: hizoo's λ equals it."""
    config = HizooConfig(**TINY, residual="mhc_lite", n_streams=4, stream_init="lss")
    torch.manual_seed(5)
    ours = StreamExpansion(config).stream_scale.detach()
    torch.manual_seed(5)
    official = nn.init.xavier_uniform_(torch.empty(4, 32)) + 0.6
    torch.testing.assert_close(ours, official, atol=1e-6, rtol=0)
    x = torch.randn(2, 3, 32)
    exp = StreamExpansion(config)
    assert torch.equal(exp(x), x[..., None, :] * exp.stream_scale)


# ---------------------------------------------------------------------------------------------- balanced rotation


@pytest.mark.parametrize("n", [2, 3, 4])
def test_balanced_rotate_keeps_each_stream_norm_and_the_sum_parallel(n):
    theta = 0.3
    torch.manual_seed(0)
    exp = StreamExpansion(HizooConfig(**TINY, residual="mhc", n_streams=n, stream_init="balanced_rotate",
                                      stream_init_angle=theta)).double()
    x = torch.randn(3, 5, 32, dtype=torch.float64)
    H = exp(x)  # [3, 5, n, 32]
    torch.testing.assert_close(H.norm(dim=-1), x.norm(dim=-1, keepdim=True).expand(3, 5, n))  # per token
    c = n * math.cos(theta) if n % 2 == 0 else (n - 1) * math.cos(theta) + 1
    torch.testing.assert_close(H.sum(-2), c * x)  # Σ_s H_s = c·x exactly: parallel to the embedding
    # the trade-off: ‖Σ H‖² = n‖x‖²(1 + (n − 1)ρ̄) with ρ̄ the mean pairwise cosine of the streams
    cos = torch.nn.functional.cosine_similarity(H[..., :, None, :], H[..., None, :, :], dim=-1)  # [3, 5, n, n]
    rho = (cos.sum((-2, -1)) - n) / (n * (n - 1))
    torch.testing.assert_close(rho, torch.full((3, 5), (c * c - n) / (n * (n - 1)), dtype=torch.float64))
    gaps = (H[..., :, None, :] - H[..., None, :, :]).norm(dim=-1) / x.norm(dim=-1)[..., None, None]
    off = ~torch.eye(n, dtype=torch.bool)
    assert (gaps[..., off] > 0.1).all()  # every pair of streams differs (by 2 sin θ on the pairs they differ)


def test_balanced_rotate_is_seeded_learnable_and_breaks_the_symmetry():
    cfg = dict(TINY, residual="hc", n_streams=4, stream_init="balanced_rotate", hc_dynamic=True)
    models = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        models.append(HizooForCausalLM(HizooConfig(**cfg)))
    angles = [m.model.expand.stream_angle.detach() for m in models]
    assert torch.equal(angles[0], angles[1]) and not torch.equal(angles[0], angles[2])
    assert torch.equal(angles[0].abs(), torch.full((4, 16), 0.2))  # ±θ, θ = stream_init_angle (default 0.2)
    torch.testing.assert_close(angles[0].sin().sum(0), torch.zeros(16), atol=1e-7, rtol=0)  # balanced per pair
    model = models[0].train()
    ids = _ids()
    model(ids, labels=ids).loss.backward()
    assert model.model.expand.stream_angle.grad.abs().sum() > 0  # a parameter, trained like rotate's


@pytest.mark.parametrize("kwargs, field", [
    (dict(residual="hc", n_streams=2, stream_reduce="mean"), "stream_reduce='mean'"),
    (dict(residual="hc", n_streams=2, stream_start="layer"), "stream_start='layer'"),
    (dict(residual="hc", n_streams=2, stream_start_seed=-1), "stream_start_seed=-1"),
    (dict(residual="hc", n_streams=2, stream_init="balanced_rotate", stream_init_angle=0.0), "stream_init_angle=0.0"),
    (dict(residual="hc", n_streams=2, stream_init="balanced_rotate", stream_init_angle=2.0), "stream_init_angle=2.0"),
    (dict(residual="hc", n_streams=2, stream_init="balanced_rotate", hidden_size=33, num_attention_heads=1,
          head_dim=32), "hidden_size=33"),
])
def test_bad_stream_values_raise_clear_errors(kwargs, field):
    with pytest.raises(ValueError) as err:
        HizooConfig(**{**TINY, **kwargs})
    assert field in str(err.value)
