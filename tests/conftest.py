"""Fixtures shared across the test folders."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def _launch(script: Path, *args: str, nprocs: int = 2, timeout: float = 300) -> list[str]:
    """Start ``nprocs`` copies of ``script`` with a torchrun-style environment; their outputs, after all exit 0."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                                                  WORLD_SIZE=str(nprocs), RANK=str(r), LOCAL_RANK=str(r),
                                                  NODE_RANK="0"))
             for r in range(nprocs)]
    try:
        outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-5000:]
    return outputs


@pytest.fixture(scope="session")
def launch_ranks():
    """``launch_ranks(script, *args, nprocs=2, timeout=300)``: run a worker script as ``nprocs`` gloo ranks."""
    return _launch
