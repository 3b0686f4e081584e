"""train.py installed from a wheel, outside a checkout: ``python -m hizoo.train`` and ``hizoo-train`` are
``python train.py``, the configs (and the study's scales) ship inside the package, and ``--config`` finds them by preset name or by their
checkout path.

The wheel tests build hizoo's wheel from a copy of the package, install it with ``--no-deps`` into a fresh virtual
environment whose only other packages are this environment's (a .pth file names its site-packages; the editable
install there is not processed, so ``import hizoo`` can only find the wheel), and run from an empty folder.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
import train  # noqa: E402  (train.py is a script at the repository root)


# ---------------------------------------------------------------------------------------------- config names
def test_packaged_config_finds_presets_by_name_and_by_checkout_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    himoe = str(train.CONFIGS / "himoe.yaml")
    for value in ("himoe", "himoe.yaml", "configs/himoe.yaml", "configs/himoe"):
        assert train.packaged_config(value) == himoe, value
    for value in ("nothing", "configs/nothing.yaml", "elsewhere/himoe.yaml"):  # the parser reports these
        assert train.packaged_config(value) == value
    mine = tmp_path / "configs" / "himoe.yaml"  # a file where the user runs wins over the packaged one
    mine.parent.mkdir()
    mine.write_text("seed_everything: 1\n")
    assert train.packaged_config("configs/himoe.yaml") == "configs/himoe.yaml"
    for inline in ("{trainer: {max_steps: 2}}", "trainer: {max_steps: 2}", "x" * 5000):  # inline YAML, too long
        assert train.packaged_config(inline) == inline
    base = str(train.CONFIGS / "base.yaml")  # every packaged config extends it: loaded first, by its own --config
    assert train.resolve_configs(["fit", "--config", "tiny", "--config=dense", "--data.source", "tiny"]) == [
        "fit", "--config", base, "--config", str(train.CONFIGS / "tiny.yaml"), "--config", base,
        f"--config={train.CONFIGS / 'dense.yaml'}", "--data.source", "tiny"]


def test_the_default_config_is_the_packaged_quickstart():
    assert train.QUICKSTART == train.CONFIGS / "quickstart.yaml" and train.QUICKSTART.is_file()
    assert train.CONFIGS.parent == Path(train.__file__).resolve().parent  # inside the package, not the cwd


def test_a_preset_name_parses_like_its_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    printed = []
    for config in ("tiny", str(train.CONFIGS / "tiny.yaml")):
        with pytest.raises(SystemExit) as done:  # --print_config prints and exits 0
            train.main(["fit", "--config", config, "--print_config"])
        assert done.value.code in (0, None)
        printed.append(capsys.readouterr().out)
    assert printed[0] == printed[1] and "max_steps: 30" in printed[0]


# ---------------------------------------------------------------------------------------------- the wheel
def _run(args, cwd, env, timeout=300) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{args}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv python, hizoo-train script, environment, empty working folder) of a fresh wheel install."""
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "source"  # a copy, so the build writes nothing into the checkout
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", "tests", "runs", "build", "*.egg-info", "__pycache__", ".pytest_cache", "docs", "bench", "outputs",
        "lightning_logs"))
    env = {"PATH": f"{tmp / 'venv' / 'bin'}:/usr/bin:/bin", "HOME": str(tmp), "OMP_NUM_THREADS": "1",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "HF_HUB_OFFLINE": "1"}
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", tmp / "wheels", source], tmp, {**env, "PATH": os.environ["PATH"]})
    wheel, = (tmp / "wheels").glob("hizoo-*.whl")
    _run([sys.executable, "-m", "venv", "--without-pip", tmp / "venv"], tmp, env)
    python = tmp / "venv" / "bin" / "python"
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp,
                        env).stdout.strip())
    (purelib / "test_environment.pth").write_text(str(Path(torch.__file__).resolve().parent.parent) + "\n")
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel], tmp, env)
    work = tmp / "work"
    work.mkdir()
    return python, tmp / "venv" / "bin" / "hizoo-train", env, work


@pytest.mark.slow  # ~15-30 s: builds and installs a wheel, then starts the CLI (imports Lightning) twice
def test_the_wheel_ships_the_configs_and_both_entry_points_are_train_py(installed):
    python, script, env, work = installed
    where = _run([python, "-c", "import importlib.util, pathlib; package = pathlib.Path(importlib.util.find_spec("
                  "'hizoo').origin).parent; print(package); print(sorted(p.name for p in package.glob('configs/*.yaml')))"],
                 work, env).stdout.splitlines()
    assert where[0].startswith(str(python.parent.parent)), where  # the wheel's package, not a checkout
    assert where[1] == str(sorted(p.name for p in (REPO / "configs").glob("*.yaml")))  # every config shipped
    # the study's scales (configs/study/*.yaml) ship too and load from the installed package as from the checkout
    from hizoo.study import SCALES
    scales = _run([python, "-c", "from hizoo.study import SCALES, variants; print(variants.SCALES_DIR); "
                   "print(repr(SCALES))"], work, env).stdout.splitlines()
    assert scales[0].startswith(str(python.parent.parent)) and scales[1] == repr(SCALES), scales
    help_text = _run([python, "-m", "hizoo.train", "--help"], work, env).stdout
    assert "fit" in help_text and "--config" in help_text
    # the README's form, from a folder without configs/: the packaged file
    printed = _run([script, "fit", "--config", "configs/tiny.yaml", "--print_config"], work, env).stdout
    assert "max_steps: 30" in printed and "router: topk" in printed


@pytest.mark.slow  # ~20-40 s: a 3-step training run of the tiny config through the installed command
def test_the_installed_command_trains_the_packaged_tiny_config_by_its_preset_name(installed):
    python, script, env, work = installed
    _run([script, "fit", "--config", "tiny", "--trainer.max_steps", "3", "--trainer.val_check_interval", "3",
          "--trainer.default_root_dir", "runs/tiny"], work, env)
    run = work / "runs" / "tiny"
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "hf_model" / "model.safetensors").is_file()
