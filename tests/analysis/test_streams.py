import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from hizoo import HizooConfig, HizooForCausalLM
from hizoo.analysis.streams import (branch_metrics, dominant_share, effective_streams, identity_distance,
                                    lss_scales, mean_pairwise_cosine, norm_shares, off_diagonal_mass, reduce_without,
                                    stream_ablation, stream_metrics, weight_concentration)


def test_one_stream_carrying_all_norm():
    streams = torch.zeros(2, 3, 4, 8)  # [B, S, n, d]
    streams[:, :, 2] = torch.randn(2, 3, 8)
    shares = norm_shares(streams)
    assert shares.tolist() == pytest.approx([0, 0, 1, 0])
    assert dominant_share(shares) == pytest.approx(1.0)
    assert effective_streams(shares) == pytest.approx(1.0)


def test_equal_norms_give_even_shares_and_n_effective_streams():
    streams = F.normalize(torch.randn(2, 5, 4, 16), dim=-1) * 3.0
    shares = norm_shares(streams)
    assert shares.tolist() == pytest.approx([0.25] * 4)
    assert dominant_share(shares) == pytest.approx(0.25)
    assert effective_streams(shares) == pytest.approx(4.0)
    # two streams with share 1/2 each -> 2 effective streams
    assert effective_streams(torch.tensor([0.5, 0.5, 0.0])) == pytest.approx(2.0)


def test_norm_share_is_the_token_mean_of_ratios():
    streams = torch.zeros(1, 2, 2, 1)
    streams[0, 0, :, 0] = torch.tensor([3.0, 1.0])  # token 0: shares 0.75, 0.25
    streams[0, 1, :, 0] = torch.tensor([1.0, 1.0])  # token 1: 0.5, 0.5
    assert norm_shares(streams).tolist() == pytest.approx([0.625, 0.375])


def test_pairwise_cosine():
    x = torch.randn(2, 3, 1, 8)
    assert mean_pairwise_cosine(x.expand(2, 3, 3, 8)) == pytest.approx(1.0, abs=1e-6)  # copies
    ortho = torch.eye(3).expand(2, 4, 3, 3)  # three orthogonal streams
    assert mean_pairwise_cosine(ortho) == pytest.approx(0.0, abs=1e-7)
    opposite = torch.stack([x[:, :, 0], -x[:, :, 0]], dim=2)
    assert mean_pairwise_cosine(opposite) == pytest.approx(-1.0, abs=1e-6)


def test_mixing_metrics():
    eye = torch.eye(4)
    assert identity_distance(eye) == 0.0
    assert off_diagonal_mass(eye) == 0.0
    swap = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert identity_distance(swap) == pytest.approx(2.0)  # sqrt(4 entries of 1)
    assert off_diagonal_mass(swap) == pytest.approx(1.0)
    assert off_diagonal_mass(torch.full((2, 2), 0.5)) == pytest.approx(0.5)
    assert weight_concentration(torch.tensor([0.0, 1.0, 0.0])) == pytest.approx(1.0)
    assert weight_concentration(torch.ones(4)) == pytest.approx(0.25)


def test_logit_spread_per_token_mean():
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 0] = torch.tensor([[0.0, 0.0], [-8.0, -8.0]])  # spread 8 over the matrix (0 within each row)
    logits[0, 1] = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])  # spread 2
    out = branch_metrics({"mix_logits": logits}, sinkhorn=True)
    assert out["mix_logit_spread"] == pytest.approx(5.0) and out["mix_logit_spread_max"] == pytest.approx(8.0)
    assert out["mix_logit_spread_above_30"] == 0.0
    lite = branch_metrics({"mix": torch.eye(3), "mix_logits": torch.tensor([[0.0, -8.0, -8.0, -8.0, -8.0, -8.0]])})
    assert lite["mix_logit_spread"] == pytest.approx(8.0)
    assert "mix_logit_spread_above_30" not in lite  # permutation logits do not feed Sinkhorn


def test_branch_metrics_average_dynamic_coefficients_and_tolerate_missing_keys():
    assert branch_metrics({}) == {}
    read = torch.tensor([1.0, 0.0]).expand(2, 3, 2)  # [B, S, n]
    mix = torch.eye(2).expand(2, 3, 2, 2)  # [B, S, n, n]
    out = branch_metrics({"read": read, "mix": mix})
    assert out["read_concentration"] == pytest.approx(1.0)
    assert out["mix_identity_distance"] == pytest.approx(0.0)
    assert out["mix_column_sums_per_token"]["mean"] == pytest.approx([1.0, 1.0])
    assert out["mix_row_sums_per_token"]["max_abs_deviation"] == 0.0
    assert "write" not in out and "mix_logit_spread" not in out


def test_stream_metrics_over_layers():
    streams = torch.zeros(1, 2, 2, 4)
    streams[..., 0, :] = 1.0
    diag = [{"attn": {"mix": torch.eye(2)}, "ffn": {}, "streams": streams}] * 2
    out = stream_metrics(diag)
    assert out["n_streams"] == 2 and len(out["layers"]) == 2
    assert out["layers"][0]["dominant_stream"] == 0 and out["layers"][0]["dominant_share"] == pytest.approx(1.0)
    assert out["depth"]["amax_forward"] == out["depth"]["amax_backward"] == pytest.approx(1.0)
    assert out["depth"]["connections"] == 2


def _tiny(**kw):
    cfg = dict(vocab_size=48, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
               residual="mhc", n_streams=3, stream_init="lss")
    cfg.update(kw)
    torch.manual_seed(0)
    return HizooForCausalLM(HizooConfig(**cfg)).eval()


@pytest.mark.parametrize("stream_reduce", ["norm_sum", "sum_norm"])
def test_stream_ablation_base_loss_is_the_model_loss_and_zeroing_matters(stream_reduce):
    # no stream ablated reproduces the model's own loss, for either output form
    model = _tiny(stream_reduce=stream_reduce)
    ids = torch.randint(0, 48, (2, 10))
    with torch.no_grad():
        out = model(ids, labels=ids, output_diagnostics=True, use_cache=False)
    abl = stream_ablation(model, out.diagnostics[-1]["streams"], ids)
    assert abl["stream_reduce"] == stream_reduce
    assert abl["base_loss"] == pytest.approx(float(out.loss), rel=1e-5)
    assert len(abl["loss_increase"]) == 3
    assert any(abs(x) > 1e-4 for x in abl["loss_increase"])


class _HandNorm(torch.nn.Module):
    """RMSNorm written out: x / sqrt(mean(x²) + eps) · w."""

    def __init__(self, d):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.linspace(0.5, 1.5, d))

    def forward(self, x):
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * self.weight


@pytest.mark.parametrize("stream_reduce", ["norm_sum", "sum_norm"])
def test_stream_ablation_zeroes_the_stream_in_the_output_form(stream_reduce):
    torch.manual_seed(0)
    n, d, V = 3, 8, 11
    norm, head = _HandNorm(d), torch.nn.Linear(d, V, bias=False)
    model = SimpleNamespace(config=SimpleNamespace(stream_reduce=stream_reduce), model=SimpleNamespace(norm=norm),
                            lm_head=head)
    streams = torch.randn(2, 5, n, d) * torch.tensor([3.0, 1.0, 0.2]).view(1, 1, n, 1)
    ids = torch.randint(0, V, (2, 5))
    abl = stream_ablation(model, streams, ids)

    def loss(hidden):  # hidden [B, S, d]
        logits = head(hidden)[:, :-1]
        return float(F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()))

    def hidden_without(j):
        kept = [s for s in range(n) if s != j]
        if stream_reduce == "norm_sum":  # Σ_{s≠j} norm(H_s)
            return sum(norm(streams[:, :, s]) for s in kept)
        return norm(sum(streams[:, :, s] for s in kept))  # norm(Σ_{s≠j} H_s)

    with torch.no_grad():
        base = loss(hidden_without(None))
        assert abl["base_loss"] == pytest.approx(base, rel=1e-6)
        for j in range(n):
            assert abl["loss_increase"][j] == pytest.approx(loss(hidden_without(j)) - base, rel=1e-5, abs=1e-6)
    assert abl["stream_reduce"] == stream_reduce
    other = "sum_norm" if stream_reduce == "norm_sum" else "norm_sum"
    keep = torch.tensor([1.0, 0.0, 1.0])
    assert not torch.allclose(reduce_without(streams, norm, keep, stream_reduce),
                              reduce_without(streams, norm, keep, other))  # the two forms really differ


def test_stream_ablation_defaults_to_sum_norm_and_rejects_unknown_forms():
    norm, head = _HandNorm(4), torch.nn.Linear(4, 5, bias=False)
    streams, ids = torch.randn(1, 3, 2, 4), torch.randint(0, 5, (1, 3))
    legacy = SimpleNamespace(config=SimpleNamespace(), model=SimpleNamespace(norm=norm), lm_head=head)
    assert stream_ablation(legacy, streams, ids)["stream_reduce"] == "sum_norm"
    bad = SimpleNamespace(config=SimpleNamespace(stream_reduce="mean"), model=SimpleNamespace(norm=norm), lm_head=head)
    with pytest.raises(ValueError, match="stream_reduce='mean'"):
        stream_ablation(bad, streams, ids)


def test_lss_scales_read_from_the_model():
    model = _tiny()
    scales = lss_scales(model)
    lam = model.model.expand.stream_scale
    assert scales["mean"] == pytest.approx(lam.mean(dim=-1).tolist())
    assert lss_scales(_tiny(stream_init="copy")) is None
    assert math.isclose(sum(scales["mean"]) / 3, 0.6, abs_tol=0.2)
