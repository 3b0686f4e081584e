"""A damaged result.json stops the study with a message that names it and says how to recover; results are
written atomically."""

import json

import pytest

from hizoo.study import runner
from hizoo.study.__main__ import main
from hizoo.study.runner import CorruptResultError, load_result, result_path

RESULT = {"variant": "dense", "label": "dense", "seed": 0, "steps": 3, "val_ce": 1.0, "val_ppl": 2.718,
          "report": {"loss": 1.0, "tokens": 8, "config": {}}, "curve": {"val": [], "train": []}, "seconds": 1.0}


@pytest.mark.parametrize("content, fragment", [
    (json.dumps(RESULT)[:40], "is not valid JSON"),
    ("", "is empty"),
    (json.dumps({"variant": "dense", "seed": 0}), r"not a complete run result \(no steps, val_ppl, report\)"),
    ("[1, 2]", "not a complete run result"),
    # reports without what every diagnostics report has, or with a field that no metric has
    (json.dumps({**RESULT, "report": {"config": {}}}),
     r"holds a diagnostics report that cannot be read \(.*missing 2 required keyword-only arguments: 'loss' and 'tokens'"),
    (json.dumps({**RESULT, "report": {**RESULT["report"], "streams": {"n_streams": 2}}}),
     r"diagnostics report that cannot be read \(.*StreamMetrics.*'residual' and 'layers'"),
    (json.dumps({**RESULT, "report": {**RESULT["report"], "experts": {"layers": {"0": {"cv": 0.1, "spread": 1}}}}}),
     r"diagnostics report that cannot be read \(ExpertLayerMetrics has no fields \['spread'\]"),
    (json.dumps({**RESULT, "report": [1, 2]}), "diagnostics report that cannot be read"),
])
def test_a_damaged_result_names_the_file_and_the_way_out(tmp_path, content, fragment):
    path = result_path(tmp_path, "dense", 0)
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(CorruptResultError, match=fragment) as err:
        load_result(path)
    assert str(path) in str(err.value) and "delete it" in str(err.value) and "--fresh" in str(err.value)


def test_the_study_command_stops_with_the_message(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(runner, "build_datamodule", lambda *args: None)  # no corpus needed to reach the check
    path = result_path(tmp_path, "dense", 0)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(RESULT)[:40])  # as a kill during the old non-atomic write left it
    with pytest.raises(SystemExit) as exit_:
        main(["moe", "--scale", "toy", "--variants", "dense", "--seeds", "1", "--out", str(tmp_path)])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert str(path) in err and "not valid JSON" in err and "--fresh" in err and "Traceback" not in err


def test_a_complete_result_reads_back_with_its_metrics(tmp_path):
    path = result_path(tmp_path, "dense", 0)
    path.parent.mkdir(parents=True)
    runner.atomic_write_json(path, RESULT)
    assert load_result(path)["metrics"] == {"val_ppl": 2.718}
    assert [p.name for p in path.parent.iterdir()] == ["result.json"]  # no temporary file left
