"""Checkpoint files: atomic writes that survive a kill -9 mid-write, safe loads, and errors that name the file."""

import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from hizoo.training.checkpointing import AtomicCheckpointIO, RunCheckpoint, atomic_torch_save, remove_partial_writes

load = AtomicCheckpointIO().load_checkpoint  # what Lightning calls to resume


def test_atomic_save_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "ckpt" / "last.ckpt"
    atomic_torch_save({"step": 1, "w": torch.ones(3)}, path)
    atomic_torch_save({"step": 2, "w": torch.zeros(3)}, path)
    assert load(path)["step"] == 2
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


# Writes a 1 MB checkpoint over an existing last.ckpt, slowly (torch.save's bytes go out in chunks with pauses),
# so that the test can kill the process in the middle of the write.
_SLOW_WRITER = """
import io, sys, time, torch
from hizoo.training.checkpointing import AtomicCheckpointIO

real_save = torch.save
def slow_save(obj, f, *args, **kwargs):
    buffer = io.BytesIO()
    real_save(obj, buffer)
    data = buffer.getvalue()
    for i in range(0, len(data), 65536):
        f.write(data[i:i + 65536])
        f.flush()
        time.sleep(0.2)
torch.save = slow_save
print("writing", flush=True)
AtomicCheckpointIO().save_checkpoint({"step": 2, "w": torch.zeros(256, 1024)}, sys.argv[1])
"""


@pytest.mark.slow  # kills a writing subprocess
def test_kill_during_a_checkpoint_write_keeps_the_previous_file_whole(tmp_path):
    """kill -9 in the middle of writing last.ckpt: last.ckpt is still the complete previous checkpoint (never 0
    bytes or partial), the unfinished temporary sits in the same folder (not in /tmp), and the next run in that
    folder removes it."""
    folder = tmp_path / "run" / "checkpoints"
    last = folder / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1, "w": torch.ones(256, 1024)}, last)
    before = last.read_bytes()
    writer = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(last)], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        partial = []
        while time.monotonic() < deadline and writer.poll() is None:
            partial = [p for p in folder.glob(".*.partial") if p.stat().st_size > 0]
            if partial:
                break
            time.sleep(0.02)
        assert partial, "the slowed write never started"
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=60)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert writer.returncode == -signal.SIGKILL
    assert last.read_bytes() == before  # the previous checkpoint, whole
    assert load(last)["step"] == 1
    assert [p.parent for p in folder.glob(".*.partial")] == [folder]  # the orphan is in the run's own folder

    # the next run in this folder clears it when its checkpoint callback is set up
    trainer = SimpleNamespace(default_root_dir=str(tmp_path / "run"), is_global_zero=True,
                              strategy=SimpleNamespace(broadcast=lambda x: x))
    RunCheckpoint().setup(trainer, None, "fit")
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]


def test_a_failed_write_removes_its_temporary(tmp_path, monkeypatch):
    def failing_save(obj, f, *args, **kwargs):
        f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_torch_save({"a": 1}, tmp_path / "last.ckpt")
    assert list(tmp_path.iterdir()) == []


def _assert_names_file_without_unsafe_advice(err: pytest.ExceptionInfo, path: Path) -> None:
    message = str(err.value)
    assert str(path) in message
    assert "set to `False` will likely succeed" not in message and "Re-running `torch.load`" not in message


def test_truncated_empty_and_foreign_files_raise_an_error_naming_the_file(tmp_path):
    good = tmp_path / "good.ckpt"
    atomic_torch_save({"global_step": 3, "w": torch.randn(64, 64)}, good)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    text = tmp_path / "text.ckpt"
    text.write_text("not a checkpoint")
    for path in (truncated, empty, text):
        with pytest.raises(ValueError, match="cannot be read") as err:
            load(path)
        _assert_names_file_without_unsafe_advice(err, path)
    with pytest.raises(FileNotFoundError, match="missing.ckpt does not exist"):
        load(tmp_path / "missing.ckpt")


class _RunsCode:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):  # unpickling this object would create the marker file
        return (Path.touch, (Path(self.marker),))


def test_a_crafted_checkpoint_is_refused_without_running_its_code(tmp_path):
    marker = tmp_path / "code_ran"
    crafted = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {}, "payload": _RunsCode(str(marker))}, crafted)
    with pytest.raises(ValueError, match="not a plain-tensor checkpoint") as err:
        load(crafted)
    _assert_names_file_without_unsafe_advice(err, crafted)
    assert "getattr" in str(err.value)  # names what it refused (Path.touch pickles as getattr(Path, "touch"))
    assert not marker.exists()


def test_checkpoint_io_refuses_unsafe_loads(tmp_path):
    path = tmp_path / "a.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 1}, path)
    assert AtomicCheckpointIO().load_checkpoint(path) == {"global_step": 1}
    with pytest.raises(ValueError, match="weights_only=False is refused"):
        AtomicCheckpointIO().load_checkpoint(path, weights_only=False)


def test_remove_partial_writes_touches_only_temporaries(tmp_path):
    for name in ("last.ckpt", "epoch=0-step=4.ckpt", ".last.ckpt.x1.partial", "notes.partial.txt"):
        (tmp_path / name).write_bytes(b"x")
    removed = remove_partial_writes(tmp_path)
    assert [p.name for p in removed] == [".last.ckpt.x1.partial"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch=0-step=4.ckpt", "last.ckpt", "notes.partial.txt"]

