"""The study runner at toy scale: every variant trains, the table and figures are written, runs are reused."""

import json

import pytest

from hizoo.models.configuration import STREAM_INITS
from hizoo.study import SCALES, moe_variants, stream_variants
from hizoo.study.__main__ import main
from hizoo.study.runner import load_result, result_path, summary_metrics
from hizoo.study.variants import select

TOY = SCALES["toy"]


@pytest.fixture(scope="module")
def moe_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study_moe")
    assert main(["moe", "--scale", "toy", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def streams_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study_streams")
    assert main(["streams", "--scale", "toy", "--out", str(out)]) == 0
    return out


def _results(out):
    return {r["variant"]: r for r in json.loads((out / "results.json").read_text())}


@pytest.mark.slow  # runs the study's variants (training runs)
def test_moe_study_writes_table_figures_and_logs_for_every_variant(moe_study):
    variants = moe_variants(TOY)
    results = _results(moe_study)
    assert list(results) == [v.name for v in variants]
    page = (moe_study / "results.md").read_text()
    for v in variants:
        assert v.label in page
        assert list((moe_study / "tensorboard" / v.name / "seed0").glob("events.out.tfevents.*"))
        assert results[v.name]["tokens"] == TOY.tokens
    assert list((moe_study / "tensorboard" / "study").glob("events.out.tfevents.*"))
    for name in ("curves.png", "balance.png"):
        assert (moe_study / name).stat().st_size > 1000
    for v in (v for v in variants if v.model.get("ffn") == "moe"):  # every MoE variant: load heatmap, domain usage
        assert (moe_study / "figures" / f"{v.name}_experts_load_heatmap.png").is_file()
        assert (moe_study / "figures" / f"{v.name}_experts_domain_usage.png").is_file()
        for key in ("val_ppl", "cv", "max_vio", "specialization"):
            assert key in results[v.name]["metrics"]
    assert "cv" not in results["dense"]["metrics"] and "cv" not in results["dense_switch"]["metrics"]
    assert "group_cv" in results["group_limited"]["metrics"] and "group_cv" not in results["topk"]["metrics"]
    assert len(results["topk"]["curve"]["val"]) == TOY.steps // TOY.val_every


@pytest.mark.slow  # runs the study's variants (training runs)
def test_moe_study_matches_parameters(moe_study):
    results = _results(moe_study)
    cfg = TOY.model
    per_layer_vector = cfg["num_hidden_layers"] * TOY.num_experts  # Hi-MoE's expert_scale [E] per layer
    moe = [results[n] for n in ("topk", "topk_norm", "group_limited", "himoe", "himoe_no_intra", "himoe_kg1")]
    for key in ("params", "active_params"):
        values = [r[key] for r in moe]
        assert max(values) - min(values) <= per_layer_vector, (key, values)
    # dense matches the active parameters up to the routers (d × E per layer)
    routers = cfg["num_hidden_layers"] * cfg["hidden_size"] * TOY.num_experts
    assert abs(results["topk"]["active_params"] - results["dense"]["active_params"]) <= routers
    assert results["topk"]["params"] > results["topk"]["active_params"]


@pytest.mark.slow  # runs the study's variants (training runs)
def test_study_reuses_finished_runs(moe_study, capsys):
    before = (moe_study / "runs" / "topk" / "seed0" / "result.json").stat().st_mtime_ns
    assert main(["moe", "--scale", "toy", "--out", str(moe_study), "--variants", "topk"]) == 0
    assert "done before" in capsys.readouterr().out
    assert (moe_study / "runs" / "topk" / "seed0" / "result.json").stat().st_mtime_ns == before


@pytest.mark.slow  # runs the study's variants (training runs)
def test_parallel_jobs_give_the_sequential_results(moe_study, tmp_path):
    assert main(["moe", "--scale", "toy", "--out", str(tmp_path), "--variants", "dense", "himoe", "--jobs", "2"]) == 0
    parallel = _results(tmp_path)
    assert list(parallel) == ["dense", "himoe"]
    for name in parallel:  # same seed, same data order; only the thread count differs
        sequential = load_result(result_path(moe_study, name, 0))
        assert parallel[name]["val_ppl"] == pytest.approx(sequential["val_ppl"], rel=1e-3)


@pytest.mark.slow  # runs the study's variants (training runs)
def test_streams_study_covers_every_init(streams_study):
    variants = stream_variants(TOY)
    results = _results(streams_study)
    assert list(results) == [v.name for v in variants]
    assert {v.model.get("stream_init") for v in variants[1:]} == set(STREAM_INITS)
    lite = [v.model["stream_init"] for v in variants if v.model.get("residual") == "mhc_lite"]
    assert lite == ["copy", "lss", "balanced_rotate"]
    page = (streams_study / "results.md").read_text()
    assert all(v.label in page for v in variants)
    assert (streams_study / "stream_dominance.png").stat().st_size > 1000
    assert "dominant_share" not in results["plain"]["metrics"]
    n = TOY.n_streams
    for v in variants[1:]:
        m = results[v.name]["metrics"]
        assert 1 / n - 1e-6 <= m["dominant_share"] <= m["dominant_share_max"] <= 1
        assert 1 <= m["effective_streams"] <= n + 1e-6
        assert "mix_identity_distance" in m and "ablation_max" in m
        # every Amax gain is either measured or named as fixed by construction, never both
        for key in ("amax_forward", "amax_backward", "column_sum_deviation", "row_sum_deviation"):
            assert (key in m) != (key in m.get("exact_by_construction", ())), (v.name, key)
        if v.model["residual"] == "hc":
            assert "exact_by_construction" not in m and m["amax_forward"] > 0
        assert (streams_study / "figures" / f"{v.name}_streams_norm_shares.png").is_file()
    # copy init: every stream starts as the embedding; a few steps leave them parallel
    assert results["hc_copy"]["metrics"]["stream_cosine"] > results["hc_rotate"]["metrics"]["stream_cosine"]


def test_parameter_counts_leave_out_unrouted_experts():
    from hizoo.models.configuration import HizooConfig
    from hizoo.models.modeling import HizooForCausalLM

    model = HizooForCausalLM(HizooConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                         ffn="moe", num_experts=8, num_experts_per_tok=2, moe_intermediate_size=8))
    total, active = model.config.num_parameters(), model.config.num_parameters(active=True)  # what results hold
    assert total == sum(p.numel() for p in model.parameters())
    experts = sum(p.numel() for layer in model.model.layers for p in layer.ffn.experts.parameters())
    assert total - active == experts * 6 // 8


def test_summary_metrics_of_a_report():
    def layer(cv, max_vio, group_cv, collapse):
        return {"load": [0.5, 0.5], "cv": cv, "max_vio": max_vio, "entropy": 0.6, "entropy_normalized": 0.9,
                "drop_rate": 0.0, "group_cv": group_cv, "within_group_collapse": collapse}

    report = {"loss": 1.0, "tokens": 8,
              "experts": {"moe_layers": [0, 1], "layers": {"0": layer(0.4, 0.5, 0.2, 0.5), "1": layer(0.6, 1.5, 0.4, 0.7)}},
              "domains": {"all_layers": {"specialization": [0.1, 0.3]}}}
    m = summary_metrics(report)
    assert m == pytest.approx({"cv": 0.5, "max_vio": 1.0, "group_cv": 0.3, "within_group_collapse": 0.6,
                               "specialization": 0.2})


def test_bad_arguments_name_what_is_allowed(capsys):
    with pytest.raises(ValueError, match=r"unknown; this study has \['dense'"):
        select(moe_variants(TOY), ["dense", "mixtral"])
    with pytest.raises(SystemExit):
        main(["moe", "--scale", "toy", "--variants", "mixtral"])
    assert "mixtral" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["moe", "--scale", "toy", "--seeds", "0"])
    assert "--seeds must be >= 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("scale", list(SCALES))
def test_every_scale_builds_valid_configs(scale):
    from hizoo.models.configuration import HizooConfig

    s = SCALES[scale]
    assert s.model["intermediate_size"] == s.top_k * s.expert_width  # the dense width is the MoE active width
    for v in moe_variants(s) + stream_variants(s):
        HizooConfig(vocab_size=s.data["vocab_size"], **{**s.model, **v.model})  # raises on a bad combination
