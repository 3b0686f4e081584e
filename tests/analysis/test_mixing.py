"""Per-token mixing diagnostics: each metric leaves its ideal value where it should and stays there where the
construction fixes it (hand-built ctx tensors, and mHC / mHC-lite / HC models pushed off their init)."""

import math

import numpy as np
import pytest
import torch

from hizoo import HizooConfig, HizooForCausalLM
from hizoo.analysis.mixing import (amax_backward, amax_forward, column_sums, depth_product, distribution,
                                   exact_axes, identity_distances, logit_spreads, row_sums, sinkhorn_exact_axis,
                                   spread_summary, stream_distribution, suffix_products)
from hizoo.analysis.streams import branch_metrics, dominant_share_per_token, norm_shares, stream_metrics
from hizoo.models.sinkhorn import permutation_mixture, sinkhorn_log

OTHER = {"row": "column", "column": "row"}
GAIN = {"column": "forward", "row": "backward"}


def test_sums_and_amax_gains_on_a_hand_built_matrix():
    # mix[i, j]: input i -> output j; H_res[out, in] is its transpose
    m = torch.tensor([[[0.5, 2.0], [0.5, 0.25]]], dtype=torch.float64)  # [N=1, 2, 2]
    assert column_sums(m).tolist() == [[1.0, 2.25]]  # Σ_i: weight each output receives
    assert row_sums(m).tolist() == [[2.5, 0.75]]  # Σ_j: weight each input sends
    # mHC: forward = max absolute row sum of H_res[out, in] = max_j Σ_i |M[i, j]|; backward = max column sum
    h_res = m[0].T
    assert amax_forward(m).item() == pytest.approx(float(h_res.abs().sum(dim=1).max())) == 2.25
    assert amax_backward(m).item() == pytest.approx(float(h_res.abs().sum(dim=0).max())) == 2.5
    negative = torch.tensor([[[1.0, -2.0], [0.0, 1.0]]])
    assert amax_forward(negative).item() == 3.0 and amax_backward(negative).item() == 3.0  # absolute values
    ds = torch.tensor([[[0.7, 0.3], [0.3, 0.7]]])
    assert amax_forward(ds).item() == pytest.approx(1.0) and amax_backward(ds).item() == pytest.approx(1.0)


def test_token_mean_hides_what_each_token_does():
    # two tokens whose mean is the doubly stochastic 0.5-matrix, but each token's row sums are 1.5 / 0.5
    m1 = torch.tensor([[0.9, 0.6], [0.1, 0.4]])
    m2 = torch.tensor([[0.1, 0.4], [0.9, 0.6]])
    mix = torch.stack([m1, m2]).view(1, 2, 2, 2)  # [B, S, n, n]
    out = branch_metrics({"mix": mix})
    assert torch.allclose(torch.tensor(out["mix"]), torch.full((2, 2), 0.5))
    assert out["mix_row_sums_per_token"]["max_abs_deviation"] == pytest.approx(0.5)
    assert out["mix_row_sums_per_token"]["min"] == pytest.approx([0.5, 0.5])
    assert out["mix_row_sums_per_token"]["max"] == pytest.approx([1.5, 1.5])
    assert out["mix_column_sums_per_token"]["max_abs_deviation"] == pytest.approx(0.0, abs=1e-7)  # stays ideal
    assert out["mix_amax_backward"] == pytest.approx(1.5) and out["mix_amax_forward"] == pytest.approx(1.0)
    assert out["mix_identity_distance"] == pytest.approx(1.0)  # ‖[[−.5, .5], [.5, −.5]]‖_F of the mean
    assert out["mix_identity_distance_per_token"] == pytest.approx((math.sqrt(0.74) + math.sqrt(1.94)) / 2)
    # an exact axis is left out, not reported as a constant
    skipped = branch_metrics({"mix": mix}, exact=frozenset({"column"}))
    assert "mix_column_sums_per_token" not in skipped and "mix_amax_forward" not in skipped
    assert "mix_row_sums_per_token" in skipped


def test_read_write_concentration_per_token():
    read = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # token 0 reads stream 0, token 1 reads stream 1
    out = branch_metrics({"read": read, "write": torch.ones(2)})
    assert out["read_concentration"] == pytest.approx(0.5)  # the token mean looks even
    assert out["read_concentration_per_token"] == pytest.approx(1.0)  # every token reads one stream alone
    assert out["write_concentration"] == out["write_concentration_per_token"] == pytest.approx(0.5)


def test_dominant_share_per_token():
    streams = torch.zeros(1, 2, 2, 3)
    streams[0, 0, 0] = 1.0  # token 0: stream 0 carries everything
    streams[0, 1, 1] = 2.0  # token 1: stream 1
    assert norm_shares(streams).tolist() == pytest.approx([0.5, 0.5])
    assert dominant_share_per_token(streams) == pytest.approx(1.0)
    even = torch.ones(1, 3, 2, 3)
    assert dominant_share_per_token(even) == pytest.approx(0.5)


def test_depth_product_is_taken_per_token():
    swap = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    per_layer = torch.stack([swap, torch.eye(2)]).view(1, 2, 2, 2)  # token 0 swaps, token 1 keeps
    diag = [{"attn": {"mix": per_layer}, "ffn": {"mix": per_layer}, "streams": torch.ones(1, 2, 2, 4)}]
    depth = stream_metrics(diag, "hc")["depth"]
    # per token: swap·swap = I and I·I = I; the product of the token means would be the 0.5-matrix
    assert torch.equal(torch.tensor(depth["product_mean"]), torch.eye(2))
    mean = per_layer.reshape(2, 2, 2).mean(0)
    assert torch.allclose(depth_product([mean, mean]), torch.full((2, 2), 0.5, dtype=torch.float64))
    m1 = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    m2 = torch.tensor([[1.0, 0.0], [3.0, 1.0]])
    assert torch.allclose(depth_product([m1, m2]), (m1 @ m2).double())  # first m1, then m2 (row vectors)
    with pytest.raises(ValueError):
        depth_product([])


def test_suffix_products_are_the_composites_to_the_last_connection():
    mats = [torch.randn(5, 3, 3) for _ in range(4)]
    suffix = suffix_products(mats)
    for k in range(4):
        expected = mats[k].double()
        for m in mats[k + 1:]:
            expected = expected @ m.double()
        assert torch.allclose(suffix[k], expected)


def test_hc_amplifying_mixing_grows_the_amax_gain_over_depth():
    amplify = torch.tensor([[1.5, 0.0], [0.5, 1.0]])  # column sums [2, 1], row sums [1.5, 1.5]
    diag = [{"attn": {"mix": amplify}, "ffn": {"mix": amplify}, "streams": torch.ones(1, 2, 2, 4)}] * 3
    out = stream_metrics(diag)
    assert out["residual"] == "hc" and "exact_by_construction" not in out
    product = torch.linalg.matrix_power(amplify.double(), 6)
    assert out["depth"]["amax_forward"] == pytest.approx(float(product.sum(0).max()))
    assert out["depth"]["amax_backward"] == pytest.approx(float(product.sum(1).max()))
    assert out["depth"]["amax_forward"] > out["depth"]["amax_backward"] > 1  # forward and backward differ
    assert out["depth"]["suffix_amax_forward"][-1] == pytest.approx(2.0)  # the last connection alone
    assert out["depth"]["suffix_amax_forward"][0] == out["depth"]["amax_forward"]
    assert out["mixing"]["column_sums_per_token"]["max"] == pytest.approx([2.0, 1.0])
    # the identity (HC's init) stays at the ideal values
    ident = [{"attn": {"mix": torch.eye(2)}, "ffn": {"mix": torch.eye(2)}, "streams": torch.ones(1, 2, 2, 4)}] * 3
    depth = stream_metrics(ident)["depth"]
    assert depth["amax_forward"] == depth["amax_backward"] == 1.0
    assert depth["column_sums_per_token"]["max_abs_deviation"] == 0.0


def test_logit_spread_distribution_fraction_above_30_and_histogram():
    logits = torch.zeros(1, 4, 2, 2)
    for t, spread in enumerate([8.0, 40.0, 2.0, 35.0]):
        logits[0, t, 0, 0] = spread
    s = logit_spreads(logits, 2)
    assert s.tolist() == [8.0, 40.0, 2.0, 35.0]
    summary = spread_summary(s)
    assert summary["mean"] == pytest.approx(21.25) and summary["max"] == 40.0 and summary["min"] == 2.0
    assert summary["median"] == pytest.approx(21.5)  # linear interpolation between 8 and 35
    assert summary["fraction_above_30"] == pytest.approx(0.5)
    assert sum(summary["histogram"]["counts"]) == 4 and summary["histogram"]["edges"][-1] == pytest.approx(40.0)
    assert "fraction_above_30" not in spread_summary(s, threshold=None)
    perm_logits = torch.tensor([[0.0, -8.0, -8.0, -8.0, -8.0, -3.0]])  # mHC-lite: n! logits
    assert logit_spreads(perm_logits, 1).tolist() == [8.0]
    out = branch_metrics({"mix_logits": logits, "mix": torch.eye(2).expand(1, 4, 2, 2)})
    assert out["mix_logit_spread"] == pytest.approx(21.25) and out["mix_logit_spread_above_30"] == 0.5


def test_distributions_match_numpy():
    x = torch.randn(101, 3, dtype=torch.float64)
    d = stream_distribution(x, ideal=0.0)
    for key, q in (("q05", 5), ("q25", 25), ("median", 50), ("q75", 75), ("q95", 95)):
        assert d[key] == pytest.approx(np.percentile(x.numpy(), q, axis=0).tolist())
    assert d["max_abs_deviation"] == pytest.approx(float(x.abs().max()))
    assert distribution(x[:, 0])["std"] == pytest.approx(float(np.std(x[:, 0].numpy())))


def test_sinkhorn_exact_axis_is_the_one_the_model_sinkhorn_makes_exact():
    torch.manual_seed(0)
    logits = 20 * torch.randn(64, 4, 4)
    mix = sinkhorn_log(logits, 2)
    axis = sinkhorn_exact_axis()
    sums = {"row": row_sums(mix), "column": column_sums(mix)}
    assert (sums[axis] - 1).abs().max() < 1e-5
    assert (sums[OTHER[axis]] - 1).abs().max() > 0.05  # two iterations leave the other axis far from 1
    assert exact_axes("mhc") == {axis} and exact_axes("mhc_lite") == {"row", "column"} and exact_axes("hc") == set()


def _model(residual, **kw):
    cfg = dict(vocab_size=48, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
               residual=residual, n_streams=3)
    cfg.update(kw)
    torch.manual_seed(0)
    return HizooForCausalLM(HizooConfig(**cfg)).eval()


def _connections(model):
    return [layer.attn_conn for layer in model.model.layers] + [layer.ffn_conn for layer in model.model.layers]


def _diagnostics(model):
    with torch.no_grad():
        return model(torch.randint(0, 48, (2, 12), generator=torch.Generator().manual_seed(1)),
                     output_diagnostics=True, use_cache=False).diagnostics


def test_mhc_with_spread_logits_and_one_sinkhorn_iteration_moves_every_metric_off_its_ideal():
    model = _model("mhc", mhc_sinkhorn_iters=1)
    with torch.no_grad():
        for conn in _connections(model):
            conn.res_bias.normal_(0.0, 15.0)  # spreads of ~45 on 9 logits
            conn.proj.normal_(0.0, 0.05)  # and token-dependent
    diag = _diagnostics(model)
    out = stream_metrics(diag, "mhc")
    axis = sinkhorn_exact_axis()
    free, gain = OTHER[axis], GAIN[OTHER[axis]]
    assert set(out["exact_by_construction"]) == {f"{axis}_sums", f"amax_{GAIN[axis]}"}
    assert f"{axis}_sums_per_token" not in out["mixing"] and f"amax_{GAIN[axis]}" not in out["depth"]
    assert out["mixing"][f"{free}_sums_per_token"]["max_abs_deviation"] > 0.1
    assert out["depth"][f"{free}_sums_per_token"]["max_abs_deviation"] > 0.1
    assert out["layers"][0]["attn"][f"mix_{free}_sums_per_token"]["max_abs_deviation"] > 0.1
    assert out["depth"][f"amax_{gain}"] > 1.1 and out["depth"][f"amax_{gain}_max"] >= out["depth"][f"amax_{gain}"]
    assert out["layers"][0]["attn"][f"mix_amax_{gain}"] > 1.05
    assert out["mixing"]["logit_spread"]["fraction_above_30"] > 0.3
    assert out["layers"][1]["ffn"]["mix_logit_spread_above_30"] > 0.3

    # independent per-token reference: the product of each token's H_res in depth order, summed over the free axis
    mixes = [layer[b]["mix"].double().reshape(-1, 3, 3) for layer in diag for b in ("attn", "ffn")]
    token = 5
    product = torch.eye(3, dtype=torch.float64)
    for m in mixes:
        product = product @ m[token]
    all_sums = []
    for t in range(mixes[0].shape[0]):
        p = torch.eye(3, dtype=torch.float64)
        for m in mixes:
            p = p @ m[t]
        all_sums.append(p.sum(dim=-2 if free == "column" else -1))
        assert torch.allclose(p.sum(dim=-1 if free == "column" else -2), torch.ones(3, dtype=torch.float64),
                              atol=1e-5)  # the exact axis stays exact through the product
    ref = torch.stack(all_sums)  # [N, n]
    d = out["depth"][f"{free}_sums_per_token"]
    assert d["max"] == pytest.approx(ref.max(dim=0).values.tolist(), rel=1e-9)
    assert d["mean_abs_deviation"] == pytest.approx(float((ref - 1).abs().mean()), rel=1e-9)
    assert out["depth"][f"amax_{gain}"] == pytest.approx(float(ref.abs().max(dim=-1).values.mean()), rel=1e-9)


def test_mhc_at_init_stays_at_the_ideal_values():
    out = stream_metrics(_diagnostics(_model("mhc")), "mhc")
    free, gain = OTHER[sinkhorn_exact_axis()], GAIN[OTHER[sinkhorn_exact_axis()]]
    assert out["mixing"][f"{free}_sums_per_token"]["max_abs_deviation"] < 1e-5
    assert out["depth"][f"amax_{gain}"] == pytest.approx(1.0, abs=1e-5)
    assert out["mixing"]["logit_spread"]["max"] == pytest.approx(8.0)  # 0 on the diagonal, −8 off it
    assert out["mixing"]["logit_spread"]["fraction_above_30"] == 0.0


def test_mhc_lite_reports_its_exact_sums_as_fixed_and_still_moves_elsewhere():
    model = _model("mhc_lite")
    with torch.no_grad():
        for conn in _connections(model):
            conn.res_bias.normal_(0.0, 3.0)
            conn.proj.normal_(0.0, 0.05)
    diag = _diagnostics(model)
    out = stream_metrics(diag)
    assert out["residual"] == "mhc_lite"  # inferred from the n! logits
    assert set(out["exact_by_construction"]) == {"row_sums", "column_sums", "amax_forward", "amax_backward"}
    assert not any(k.endswith("_sums_per_token") or k.startswith("amax") for k in out["depth"])
    assert "fraction_above_30" not in out["mixing"]["logit_spread"]
    assert out["layers"][0]["attn"]["mix_identity_distance_per_token"] > 0.1  # the mixing itself moves
    # the construction really fixes them: every token's sums are 1
    mix = torch.cat([layer[b]["mix"].reshape(-1, 3, 3) for layer in diag for b in ("attn", "ffn")])
    assert torch.allclose(mix.sum(-1), torch.ones(1), atol=1e-6)
    assert torch.allclose(mix.sum(-2), torch.ones(1), atol=1e-6)
    assert torch.allclose(permutation_mixture(torch.randn(7, 6)).sum(-2), torch.ones(1), atol=1e-6)


def test_hc_model_with_amplifying_static_mixing():
    model = _model("hc")
    ident = stream_metrics(_diagnostics(model), "hc")
    assert ident["depth"]["amax_forward"] == ident["depth"]["amax_backward"] == 1.0  # A_r = I at init
    with torch.no_grad():
        for conn in _connections(model):
            conn.static_mix.mul_(1.2)
    out = stream_metrics(_diagnostics(model), "hc")
    assert out["depth"]["amax_forward"] == pytest.approx(1.2 ** 4)  # 4 connections of 1.2·I
    assert out["depth"]["amax_backward"] == pytest.approx(1.2 ** 4)
    assert out["mixing"]["column_sums_per_token"]["max_abs_deviation"] == pytest.approx(0.2)
    assert out["layers"][0]["ffn"]["mix_identity_distance_per_token"] == pytest.approx(0.2 * math.sqrt(3))
