"""configs/base.yaml: the trainer settings every config extends with ``config: base.yaml``. Each config run alone
(``train.py fit --config configs/X.yaml``) parses to the base with the config's own settings on top, key by key;
a user's config may extend a base of its own; a missing or circular base is refused naming the file."""

import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import train  # noqa: E402  (train.py is a script at the repository root)

BASE = REPO / "configs" / "base.yaml"
CONFIGS = sorted(p for p in (REPO / "configs").glob("*.yaml") if p != BASE)


def _printed(capsys, *args: str) -> dict:
    with pytest.raises(SystemExit) as done:
        train.main(["fit", *args, "--print_config"])
    assert done.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("config_path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_extends_the_base_key_by_key(config_path, capsys):
    own = yaml.safe_load(config_path.read_text())
    assert next(iter(own)) == "config" and own["config"] == "base.yaml"  # first: what follows overrides it
    base = yaml.safe_load(BASE.read_text())
    printed = _printed(capsys, "--config", str(config_path))
    for key, value in base["trainer"].items():  # the base's settings the config does not set are the base's
        expected = own.get("trainer", {}).get(key, value)
        if key == "callbacks":
            assert [c["class_path"] for c in printed["trainer"]["callbacks"]] == [c["class_path"] for c in expected]
            for got, want in zip(printed["trainer"]["callbacks"], expected):
                assert want.get("init_args", {}).items() <= got["init_args"].items()
        else:
            assert printed["trainer"][key] == expected, key
    for key, value in own.get("trainer", {}).items():  # and the config's own settings win
        if key != "callbacks":
            assert printed["trainer"][key] == value, key
    assert printed["seed_everything"] == own.get("seed_everything", base["seed_everything"])
    assert printed["model"]["model_config"] == {**printed["model"]["model_config"], **own["model"]["model_config"]}


def test_tiny_overrides_only_what_it_sets(capsys):
    printed = _printed(capsys, "--config", str(REPO / "configs" / "tiny.yaml"))
    assert printed["trainer"]["max_steps"] == 30 and printed["trainer"]["gradient_clip_val"] == 1.0  # tiny, base
    assert printed["trainer"]["precision"] == "32-true"
    every = [c["init_args"].get("every_n_train_steps") for c in printed["trainer"]["callbacks"]]
    assert every[1] == 10  # tiny's own callbacks list replaces the base's whole


def test_a_user_config_extends_its_own_base(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "common.yaml").write_text("config: " + str(BASE) + "\ntrainer:\n  max_steps: 7\n")
    (tmp_path / "mine" / "run.yaml").write_text(
        "config: ../common.yaml\ntrainer:\n  limit_val_batches: 3\nmodel:\n  model_config:\n    hidden_size: 32\n"
        "    num_hidden_layers: 2\n    num_attention_heads: 2\n")
    run = str(tmp_path / "mine" / "run.yaml")
    assert train.resolve_configs(["fit", "--config", run]) == [
        "fit", "--config", str(BASE), "--config", str((tmp_path / "common.yaml").resolve()), "--config", run]
    printed = _printed(capsys, "--config", run)
    assert (printed["trainer"]["max_steps"], printed["trainer"]["limit_val_batches"]) == (7, 3)
    assert printed["trainer"]["log_every_n_steps"] == 10  # from configs/base.yaml, two levels up


def test_a_missing_or_circular_base_is_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("config: nothing.yaml\n")
    with pytest.raises(FileNotFoundError, match=r"a.yaml: config: nothing.yaml names no file"):
        train.resolve_configs(["fit", "--config", str(tmp_path / "a.yaml")])
    (tmp_path / "b.yaml").write_text("config: c.yaml\n")
    (tmp_path / "c.yaml").write_text("config: b.yaml\n")
    with pytest.raises(ValueError, match="includes itself"):
        train.resolve_configs(["fit", "--config", str(tmp_path / "b.yaml")])
