"""Runs you can trust, tested as a user meets them: the README's resume command after a run was killed, SIGTERM
from a scheduler, a 2-process DDP run stopped and resumed mid-epoch, resumes with changed settings, and runs that
train nothing or diverge. Each interrupted-and-resumed run must give the uninterrupted run's losses.

The subprocess tests run ``python train.py`` on a small config written next to them (the tiny model, 40 steps,
a checkpoint every 4 steps); they take seconds to a minute each and carry the ``slow`` marker."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from hizoo.training.cli import RunFailed
from hizoo.training.run_folder import RunFolderInUse

REPO = Path(__file__).resolve().parent.parent
TRAIN = str(REPO / "train.py")
STEPS, EVERY = 40, 4

sys.path.insert(0, str(REPO))
import train  # noqa: E402  (train.py is a script at the repository root)

pytestmark = pytest.mark.slow  # training runs of train.py in subprocesses


def _config(path: Path, cache: Path, base: str = "tiny.yaml", **trainer) -> Path:
    """A copy of configs/<base> with a shorter run, every step logged, and the shared tokenizer cache."""
    config = yaml.safe_load((REPO / "configs" / base).read_text())
    config["trainer"].update({"max_steps": STEPS, "log_every_n_steps": 1, "val_check_interval": STEPS,
                              "limit_val_batches": 1, "enable_progress_bar": False, "enable_model_summary": False,
                              **trainer})
    config["trainer"]["callbacks"] = [{"class_path": "hizoo.training.RunCheckpoint",
                                       "init_args": {"every_n_train_steps": EVERY}}]
    config["data"]["cache_dir"] = str(cache)
    config["config"] = str(REPO / "configs" / config["config"])  # the base it extends, from its new folder
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _start(cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, TRAIN, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)  # its own process group: DDP ranks are killed with it


def _finish(process: subprocess.Popen, timeout: float = 400) -> str:
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
        pytest.fail(f"training did not end within {timeout} s:\n{out[-3000:]}")
    return out


def _run(cwd: Path, *args: str) -> str:
    process = _start(cwd, *args)
    out = _finish(process)
    assert process.returncode == 0, out[-3000:]
    return out


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            out = _finish(process)
            pytest.fail(f"{path} never appeared (exit {process.returncode}):\n{out[-3000:]}")
        time.sleep(0.02)


def _losses(run_dir: Path) -> dict[int, float]:
    """The run folder's TensorBoard curve, step -> train/loss (each step once: a resumed start purges the steps
    its predecessor logged after the checkpoint)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    scalars = events.Scalars("train/loss")
    assert len({e.step for e in scalars}) == len(scalars), "a step appears twice"
    return {e.step: e.value for e in scalars}


def _assert_same_curve(resumed: dict[int, float], straight: dict[int, float]) -> None:
    assert sorted(resumed) == sorted(straight) == list(range(STEPS))
    torch.testing.assert_close(torch.tensor([resumed[s] for s in range(STEPS)]),
                               torch.tensor([straight[s] for s in range(STEPS)]), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tokenizer-cache")


@pytest.fixture(scope="module")
def straight(tmp_path_factory, cache) -> dict[int, float]:
    """The uninterrupted run, started as the README says: ``python train.py fit --config X``."""
    cwd = tmp_path_factory.mktemp("straight")
    config = _config(cwd / "tiny.yaml", cache)
    _run(cwd, "fit", "--config", str(config))
    assert (cwd / "runs" / "tiny" / "hf_model" / "model.safetensors").is_file()
    return _losses(cwd / "runs" / "tiny")


@pytest.mark.slow
def test_readme_resume_command_after_kill_9(tmp_path, cache, straight):
    """kill -9 mid-run, then exactly ``python train.py fit --config X --ckpt_path last``: the run continues from
    its last checkpoint in the same folder and ends with the uninterrupted run's losses at every step."""
    config = _config(tmp_path / "tiny.yaml", cache)
    run_dir = tmp_path / "runs" / "tiny"
    first = _start(tmp_path, "fit", "--config", str(config))
    _wait_for(run_dir / "checkpoints" / f"epoch=0-step={2 * EVERY}.ckpt", first)
    os.killpg(first.pid, signal.SIGKILL)
    _finish(first)
    assert first.returncode == -signal.SIGKILL
    assert not (run_dir / "hf_model").exists()  # it really was stopped mid-run
    kept = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert EVERY <= kept < STEPS  # last.ckpt follows the step checkpoint: the kill may land between them

    out = _run(tmp_path, "fit", "--config", str(config), "--ckpt_path", "last")
    assert f"resuming {Path('runs') / 'tiny' / 'checkpoints' / 'last.ckpt'} (step {kept})" in out
    assert (run_dir / "hf_model" / "model.safetensors").is_file()
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == STEPS
    _assert_same_curve(_losses(run_dir), straight)


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["SIGTERM", "SIGUSR1"])
def test_stop_signal_saves_the_current_step_and_exits_non_zero(tmp_path, cache, straight, stop):
    config = _config(tmp_path / "tiny.yaml", cache)
    run_dir = tmp_path / "runs" / "tiny"
    first = _start(tmp_path, "fit", "--config", str(config))
    _wait_for(run_dir / "checkpoints" / f"epoch=0-step={EVERY}.ckpt", first)
    first.send_signal(getattr(signal, stop))
    out = _finish(first)
    assert first.returncode == 128 + getattr(signal, stop), out[-3000:]
    stopped_at = int(out.split(f"stopped by {stop} at step ")[1].split(";")[0])
    assert EVERY <= stopped_at < STEPS
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == stopped_at  # saved at the step where it stopped, not the last periodic one
    assert not (run_dir / "hf_model").exists()
    if stop == "SIGUSR1":
        return  # the same stop as SIGTERM from here on; the resume is checked once, for SIGTERM

    _run(tmp_path, "fit", "--config", str(config), "--ckpt_path", "last")
    _assert_same_curve(_losses(run_dir), straight)


@pytest.mark.slow
def test_ddp_run_stopped_mid_epoch_resumes_with_the_uninterrupted_losses(tmp_path, cache):
    """2 gloo processes, each with its shard: SIGTERM to the launcher stops both ranks at the same step with a
    checkpoint; the resumed run (data position, router state, optimizer) matches the uninterrupted DDP run."""
    data = dict(max_files=30, vocab_size=384, seq_len=64, batch_size=4)
    straight_cwd, resumed_cwd = tmp_path / "straight", tmp_path / "resumed"
    for cwd in (straight_cwd, resumed_cwd):
        config = _config(cwd / "ddp.yaml", cache, base="ddp_cpu.yaml")
        content = yaml.safe_load(config.read_text())
        content["data"].update(data)
        content["model"]["model_config"].update(hidden_size=64, num_hidden_layers=2)
        config.write_text(yaml.safe_dump(content))
    out = _run(straight_cwd, "fit", "--config", "ddp.yaml")
    assert "MEMBER: 2/2" in out
    run_dir = resumed_cwd / "runs" / "ddp_cpu"
    first = _start(resumed_cwd, "fit", "--config", "ddp.yaml")
    _wait_for(run_dir / "checkpoints" / f"epoch=0-step={EVERY}.ckpt", first)
    first.send_signal(signal.SIGTERM)
    out = _finish(first)
    assert first.returncode == 143, out[-3000:]
    stopped_at = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert EVERY <= stopped_at < STEPS
    _run(resumed_cwd, "fit", "--config", "ddp.yaml", "--ckpt_path", "last")
    _assert_same_curve(_losses(run_dir), _losses(straight_cwd / "runs" / "ddp_cpu"))


# In-process checks on a finished run's folder (each start stops before or right after loading the checkpoint).
@pytest.fixture(scope="module")
def finished(tmp_path_factory, cache) -> Path:
    cwd = tmp_path_factory.mktemp("finished")
    config = _config(cwd / "tiny.yaml", cache, max_steps=2)
    train.main(["fit", "--config", str(config), "--trainer.default_root_dir", str(cwd / "run")])
    return config


def test_resume_refuses_changed_model_and_data_settings(finished):
    run = ["fit", "--config", str(finished), "--trainer.default_root_dir", str(finished.parent / "run"),
           "--ckpt_path", "last"]
    with pytest.raises(ValueError, match="model.lr: 0.003 in the checkpoint, 0.01 now"):
        train.main([*run, "--model.lr", "0.01"])
    with pytest.raises(ValueError, match="model_config.num_experts: 8 in the checkpoint, 4 now"):
        train.main([*run, "--model.model_config.num_experts", "4"])
    with pytest.raises(ValueError, match="data.seed: 0 in the checkpoint, 1 now"):
        train.main([*run, "--data.seed", "1"])


def test_fresh_start_in_a_folder_with_a_run_is_refused(finished):
    with pytest.raises(RunFolderInUse, match="already holds a run.*--ckpt_path last"):
        train.main(["fit", "--config", str(finished), "--trainer.default_root_dir", str(finished.parent / "run")])


def test_corrupt_last_checkpoint_names_the_file(finished, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(finished.parent / "run", copy)
    last = copy / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(ValueError, match=f"checkpoint {last} cannot be read") as err:
        train.main(["fit", "--config", str(finished), "--trainer.default_root_dir", str(copy), "--ckpt_path", "last"])
    assert "Re-running `torch.load`" not in str(err.value)  # no advice to load unsafely


def test_resume_loads_with_weights_only(finished, tmp_path, monkeypatch):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(finished.parent / "run", copy)
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    train.main(["fit", "--config", str(finished), "--trainer.default_root_dir", str(copy), "--ckpt_path", "last",
                "--trainer.max_steps", "3"])
    assert calls and all(flag is True for flag in calls), calls


class _Diverge(L.Callback):
    """Makes the validation loss overflow (huge logits) while training stays finite."""

    def on_validation_start(self, trainer, pl_module):
        with torch.no_grad():
            pl_module.model.lm_head.weight.mul_(1e30)


@pytest.mark.parametrize("case", ["max_steps_0", "no_batches", "nan_ppl"])
def test_runs_that_train_nothing_or_diverge_fail_without_export(case, tmp_path, cache):
    config = _config(tmp_path / "tiny.yaml", cache, max_steps=2, val_check_interval=2)
    run_dir = tmp_path / "run"
    args = ["fit", "--config", str(config), "--trainer.default_root_dir", str(run_dir)]
    if case == "max_steps_0":
        with pytest.raises(RunFailed, match="trainer.max_steps=0 trains nothing"):
            train.main([*args, "--trainer.max_steps", "0"])
    elif case == "no_batches":
        with pytest.raises(ValueError, match="fewer than batch_size=100000: not one training batch"):
            train.main([*args, "--data.batch_size", "100000"])
    else:
        with pytest.raises(RunFailed, match="validation perplexity is (inf|nan) at step 2"):
            train.main(args, trainer_defaults={"callbacks": [_Diverge()]})
    assert not (run_dir / "hf_model").exists()


@pytest.mark.slow
def test_failed_run_exits_non_zero_with_the_message(tmp_path, cache):
    config = _config(tmp_path / "tiny.yaml", cache)
    process = _start(tmp_path, "fit", "--config", str(config), "--trainer.max_steps", "0")
    out = _finish(process)
    assert process.returncode == 1
    assert "hizoo: trainer.max_steps=0 trains nothing" in out
