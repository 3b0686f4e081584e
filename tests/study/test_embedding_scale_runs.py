"""docs/embedding_scale_runs.py: its runs are study variants with stream_embedding_scale set (no patched code)."""

import importlib.util
from pathlib import Path

from hizoo.study import SCALES
from hizoo.study.runner import run_config

SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "embedding_scale_runs.py"


def test_the_side_runs_are_config_overrides(tmp_path):
    spec = importlib.util.spec_from_file_location("embedding_scale_runs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cpu = SCALES["cpu"]
    variants = {v.name: v for v in module.scaled_variants(cpu)}
    assert list(variants) == ["hc_copy_embedding_x0.25", "mhc_copy_embedding_x0.25", "plain_embedding_x4"]
    scales = {name: run_config(v, cpu, 0, tmp_path)["model"]["model_config"]["stream_embedding_scale"]
              for name, v in variants.items()}
    assert scales == {"hc_copy_embedding_x0.25": 1 / cpu.n_streams, "mhc_copy_embedding_x0.25": 1 / cpu.n_streams,
                      "plain_embedding_x4": 4.0}
    assert variants["hc_copy_embedding_x0.25"].model["stream_init"] == "copy"
