"""`python -m hizoo.analysis FILE.ckpt` on a crafted checkpoint: the payload does not run, the command exits
non-zero and says the file is not a plain-tensor checkpoint."""

import os
import subprocess
import sys

import pytest
import torch


class _Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):  # unpickling would call os.mkdir(target)
        return (os.mkdir, (self.target,))


@pytest.mark.slow  # the analysis command line in a fresh interpreter
def test_analysis_cli_does_not_run_a_crafted_checkpoint(tmp_path):
    target = tmp_path / "EXECUTED"
    ckpt = tmp_path / "model.ckpt"
    torch.save({"hizoo_config": {}, "state_dict": {}, "callbacks": _Payload(str(target))}, ckpt)
    result = subprocess.run([sys.executable, "-m", "hizoo.analysis", str(ckpt), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"checkpoint {ckpt} is not a plain-tensor checkpoint" in result.stderr
    assert "Traceback" not in result.stderr
    assert not target.exists() and not (tmp_path / "out").exists()
