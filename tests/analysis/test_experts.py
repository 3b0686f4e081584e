import math

import pytest
import torch

from hizoo import HizooConfig, HizooForCausalLM
from hizoo.analysis import collect, scalars, summarize
from hizoo.analysis.domains import domain_expert_counts, domain_usage, js_divergence
from hizoo.analysis.experts import expert_metrics
from hizoo.analysis.plots import figures
from hizoo.routing.base import RoutingResult


def _result(idx, dropped=None):
    T, K = idx.shape
    return RoutingResult(idx, torch.ones(T, K), torch.zeros(T, 4), {}, dropped)


def test_expert_metrics_skip_dense_layers_and_average_moe_layers():
    balanced = _result(torch.tensor([[0, 1], [2, 3]]))
    skewed = _result(torch.tensor([[0, 1], [0, 1]]), dropped=torch.tensor([[False, True], [False, False]]))
    out = expert_metrics((None, balanced, skewed), num_experts=4, n_groups=2).to_dict()
    assert out["moe_layers"] == [1, 2]
    assert out["layers"][1]["max_vio"] == pytest.approx(0.0)
    assert out["layers"][2]["max_vio"] == pytest.approx(1.0)  # loads .5 .5 0 0
    assert out["layers"][2]["max_group_share"] == pytest.approx(1.0)
    assert out["mean_max_vio"] == pytest.approx(0.5)
    assert out["mean_drop_rate"] == pytest.approx(0.125)
    assert expert_metrics((None, None), 4).to_dict() == {"moe_layers": [], "layers": {}}


def test_domain_usage_and_js_specialization():
    # domain 0 always uses expert 0, domain 1 always expert 1: usage is one-hot, average is [.5, .5]
    idx = torch.tensor([[0], [0], [1], [1]])
    dom = torch.tensor([0, 0, 1, 1])
    counts = domain_expert_counts(idx, dom, num_experts=2, num_domains=3)
    assert counts.tolist() == [[2, 0], [0, 2], [0, 0]]
    out = domain_usage(counts, ["code", "docs", "empty"])
    assert out["domains"] == ["code", "docs"]  # the domain without tokens is left out
    assert out["usage"] == [[1.0, 0.0], [0.0, 1.0]]
    # JS(one-hot, uniform) = H([.75, .25]) - (0 + log 2)/2
    expected = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) - math.log(2) / 2
    assert out["specialization"] == pytest.approx([expected, expected])
    # a domain that routes like the average has specialization 0
    same = domain_usage(torch.tensor([[1.0, 3.0], [2.0, 6.0]]))
    assert same["specialization"] == pytest.approx([0.0, 0.0], abs=1e-12)
    assert float(js_divergence(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))) == pytest.approx(math.log(2))


def test_domain_counts_skip_unknown_and_reject_bad_ids():
    counts = domain_expert_counts(torch.tensor([[0], [1]]), torch.tensor([-1, 0]), 2, 1)
    assert counts.tolist() == [[0, 1]]
    with pytest.raises(ValueError, match="num_domains"):
        domain_expert_counts(torch.tensor([[0]]), torch.tensor([3]), 2, 2)


def test_collect_on_a_moe_mhc_model_fills_every_section():
    torch.manual_seed(0)
    model = HizooForCausalLM(HizooConfig(
        vocab_size=48, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        ffn="moe", num_experts=4, num_experts_per_tok=2, n_groups=2, router="himoe", moe_intermediate_size=8,
        experts_backend="eager", residual="mhc", n_streams=2)).eval()
    ids = torch.randint(0, 48, (2, 8))
    report = collect(model, ids, domain_ids=torch.randint(0, 2, (2, 8)), domain_names=["a", "b"])
    with torch.no_grad():  # the report's loss is the next-token CE of the model's logits
        logits = model(ids).logits
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    assert report["loss"] == pytest.approx(float(expected), rel=1e-6)
    assert report["experts"]["moe_layers"] == [0, 1]
    assert report["domains"]["all_layers"]["domains"] == ["a", "b"]
    assert len(report["streams"]["layers"]) == 2 and "ablation" in report["streams"]
    tags = scalars(report)
    assert "experts/layer0/max_vio" in tags and "streams/layer1/dominant_share" in tags
    assert "streams/layer0/ffn/mix_identity_distance" in tags and "streams/logit_spread/median" in tags
    assert "streams/amax_forward" in tags or "streams/amax_backward" in tags
    assert set(figures(report)) == {"experts/load_heatmap", "experts/group_loads", "experts/domain_usage",
                                    "streams/norm_shares", "streams/mix", "streams/logit_spread",
                                    "streams/mix_sums", "streams/amax_depth"}
    assert any("expert balance" in line for line in summarize(report))


def test_collect_on_a_dense_single_stream_model_notes_what_is_skipped():
    model = HizooForCausalLM(HizooConfig(vocab_size=48, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=32)).eval()
    report = collect(model, torch.randint(0, 48, (1, 6)))
    assert "experts" not in report and "streams" not in report
    assert any("no MoE" in n for n in report["notes"]) and any("single residual stream" in n for n in report["notes"])
    assert figures(report) == {}


def test_summary_names_the_dominant_stream_and_its_layers():
    def layer(share, dom):
        return {"norm_share": [], "dominant_share": share, "dominant_stream": dom, "effective_streams": 1.5,
                "mean_cosine": 0.9, "attn": {}, "ffn": {}}
    report = {"loss": 3.0, "tokens": 10, "notes": [], "streams": {
        "n_streams": 4, "residual": "hc",
        "layers": [layer(0.3, 0)] + [layer(0.7, 2)] * 2 + [layer(0.72, 2), layer(0.9, 1)]}}
    lines = summarize(report)
    assert "stream 2 carries 71% of the residual norm in layers 1–3" in lines
    assert "stream 1 carries 90% of the residual norm in layers 4" in lines
    assert not any("stream 0 carries" in line for line in lines)  # 0.3 is near the even 1/4


def test_drop_rate_comes_from_the_capacity_limited_router():
    model = HizooForCausalLM(HizooConfig(
        vocab_size=48, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, ffn="moe",
        num_experts=4, num_experts_per_tok=2, moe_intermediate_size=8, experts_backend="eager",
        capacity_factor=0.5)).eval()
    report = collect(model, torch.randint(0, 48, (2, 8)))
    # capacity floor(2 · 0.5 · 16 / 4) = 4 pairs per expert (even, >= 4): at most 16 of the 32 pairs are kept
    assert report["experts"]["layers"][0]["drop_rate"] >= 0.5
    assert any("capacity drops" in line for line in summarize(report))
