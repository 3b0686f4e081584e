"""The streams study's per-run numbers and table cells from hand-built diagnostics reports."""

import pytest

from hizoo.study.report import table
from hizoo.study.runner import summary_metrics


def _dist(dev):
    return {"mean_abs_deviation": dev, "max_abs_deviation": 2 * dev}


def _report(residual, exact=(), **depth):
    conn = {"mix": [[1.0]], "mix_identity_distance": 0.1, "mix_identity_distance_per_token": 0.3}
    layer = {"norm_share": [0.5, 0.5], "dominant_share": 0.5, "dominant_stream": 0, "effective_streams": 1.5,
             "mean_cosine": 0.2, "attn": conn, "ffn": conn}
    mixing = {f"{axis}_sums_per_token": _dist(0.01) for axis in ("column", "row") if f"{axis}_sums" not in exact}
    if residual == "mhc":
        mixing["logit_spread"] = {"median": 8.0, "fraction_above_30": 0.25}
    streams = {"n_streams": 2, "residual": residual, "layers": [layer, layer], "mixing": mixing,
               "depth": {"connections": 4, "product_mean": [[1.0, 0.0], [0.0, 1.0]], **depth}}
    if exact:
        streams["exact_by_construction"] = {name: "why" for name in exact}
    return {"loss": 1.0, "tokens": 8, "streams": streams}


def test_summary_metrics_name_what_is_fixed_instead_of_reporting_it():
    m = summary_metrics(_report("mhc", exact=("row_sums", "amax_backward"), amax_forward=1.3))
    assert m["mix_identity_distance"] == pytest.approx(0.1)  # of the token-mean mixing (the earlier metric)
    assert m["mix_identity_distance_per_token"] == pytest.approx(0.3)
    assert m["column_sum_deviation"] == pytest.approx(0.01) and "row_sum_deviation" not in m
    assert m["amax_forward"] == pytest.approx(1.3) and "amax_backward" not in m
    assert m["logit_spread_above_30"] == pytest.approx(0.25)
    assert sorted(m["exact_by_construction"]) == ["amax_backward", "row_sum_deviation"]
    hc = summary_metrics(_report("hc", amax_forward=2.0, amax_backward=1.5))
    assert hc["amax_backward"] == 1.5 and "exact_by_construction" not in hc and "logit_spread_above_30" not in hc
    # a report without the mixing and depth sections gives the metrics it has
    old = _report("mhc")
    del old["streams"]["depth"], old["streams"]["mixing"]
    assert "amax_forward" not in summary_metrics(old) and "mix_identity_distance" in summary_metrics(old)
    # a field that no metric has is refused, not skipped (load_result reports it as a corrupt result)
    old["streams"]["depth"] = {"connections": 4, "product_mean": [[1.0]], "amax_gain": 1.0}
    with pytest.raises(ValueError, match=r"DepthMetrics has no fields \['amax_gain'\]"):
        summary_metrics(old)


def test_table_marks_exact_metrics_as_such():
    def run(variant, report):
        return {"variant": variant, "label": variant, "params": 1e6, "active_params": 1e6,
                "metrics": {"val_ppl": 10.0, **summary_metrics(report)}}

    results = [run("mhc_lite", _report("mhc_lite", exact=("row_sums", "column_sums", "amax_forward",
                                                          "amax_backward"))),
               run("hc", _report("hc", amax_forward=2.0, amax_backward=1.5))]
    lines = table("streams", results).splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    lite = dict(zip(head, (c.strip() for c in lines[2].strip("|").split("|"))))
    hc = dict(zip(head, (c.strip() for c in lines[3].strip("|").split("|"))))
    assert lite["Amax fwd"] == lite["Amax bwd"] == "1 (exact)" and lite["row-sum dev."] == "0 (exact)"
    assert hc["Amax fwd"] == "2.000" and hc["Amax bwd"] == "1.500"
    assert "spread > 30" not in head  # no run has it (mHC only): the column is left out
