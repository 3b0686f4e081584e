"""The diagnostics of tiny seeded models equal the numbers, JSON keys, TensorBoard tags and study metrics recorded
from the code before the report became dataclasses (data/report_baseline.json, written by report_cases.py's
models through ``collect``, ``json.dumps``, ``scalars``, the study's ``summary_metrics`` and ``summarize``)."""

import json
import math
from pathlib import Path

import pytest

from hizoo.analysis.report import DiagnosticsReport, collect, diagnose, scalars, summarize
from hizoo.study.runner import summary_metrics

from .report_cases import CASES, case_inputs

BASELINE = json.loads((Path(__file__).parent / "data" / "report_baseline.json").read_text())


def _assert_same(got, want, where="report"):
    """Same structure (dict keys, list lengths, types) and the same numbers to 1e-6 relative."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), f"{where}: keys {sorted(got)} != {sorted(want)}"
        for k in want:
            _assert_same(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_same(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert isinstance(got, (int, float)), where
        assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, rel=1e-6, abs=1e-9), where
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


@pytest.mark.parametrize("name", list(CASES))
def test_report_json_tags_study_metrics_and_summary_are_unchanged(name):
    model, ids, domain_ids, names = case_inputs(name)
    report = collect(model, ids, domain_ids, names)
    want = BASELINE[name]
    _assert_same(json.loads(json.dumps(report, default=str)), want["report_json"])
    _assert_same(scalars(report), want["scalars"], "scalars")
    _assert_same(summary_metrics(report), want["study_metrics"], "study_metrics")
    assert summarize(report) == want["summary"]


@pytest.mark.parametrize("name", list(CASES))
def test_typed_report_round_trips_through_json_with_the_recorded_keys(name):
    model, ids, domain_ids, names = case_inputs(name)
    report = diagnose(model, ids, domain_ids, names)
    text = json.dumps(report.to_dict(), default=str)
    _assert_same(json.loads(text), BASELINE[name]["report_json"])  # the JSON keys (and numbers) of before
    back = DiagnosticsReport.from_dict(json.loads(text))
    assert back == report  # the same dataclass, nested records and integer layer keys included
    assert back.scalars() == report.scalars()
    _assert_same(report.study_metrics(), BASELINE[name]["study_metrics"], "study_metrics")
    assert summarize(back) == BASELINE[name]["summary"]


def test_from_dict_refuses_an_unknown_key():
    with pytest.raises(ValueError, match="no fields \\['los'\\]"):
        DiagnosticsReport.from_dict({"los": 1.0, "tokens": 3})
