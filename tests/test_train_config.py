"""train.py's typed configuration: --help lists every HizooConfig field, a misspelled option or YAML key fails at
parse time naming the closest valid one, and every bad argument of the LightningModule names itself."""

import sys
from pathlib import Path

import pytest

from hizoo.models.configuration import HizooConfig, config_field_types
from hizoo.models.lightning import HizooLightningModule

REPO = Path(__file__).resolve().parent.parent
TINY = str(REPO / "configs" / "tiny.yaml")
sys.path.insert(0, str(REPO))
import train  # noqa: E402  (train.py is a script at the repository root)


def _parse_error(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as done:
        train.main(["fit", "--config", TINY, *args, "--print_config"])
    assert done.value.code == 2
    return capsys.readouterr().err


def test_help_lists_every_model_field_with_type_and_default(capsys):
    with pytest.raises(SystemExit):
        train.main(["fit", "--help"])
    text = capsys.readouterr().out
    for name in config_field_types(HizooConfig):
        assert f"--model.model_config.{name} " in text, name
    assert "--model.model_config.router {topk,group_limited,himoe}" in text
    assert "(type: int, default: 512)" in text  # hidden_size
    assert "learning rate" in text  # the LightningModule's arguments carry their help too


@pytest.mark.parametrize("args, closest", [
    (["--model.model_config.routr", "himoe"], "--model.model_config.router"),
    (["--model.model_config.num_expers", "4"], "--model.model_config.num_experts"),
    (["--data.vocab_sise", "300"], "--data.vocab_size"),
    (["--model.model_config", '{"hidden_size_x": 64}'], "--model.model_config.hidden_size"),
])
def test_misspelled_option_fails_at_parse_time_naming_the_closest(args, closest, capsys):
    assert f"did you mean {closest}?" in _parse_error(args, capsys)


def test_misspelled_yaml_key_fails_at_parse_time(tmp_path, capsys):
    typo = tmp_path / "typo.yaml"
    typo.write_text("model:\n  model_config:\n    hidden_size_x: 64\n")
    err = _parse_error(["--config", str(typo)], capsys)
    assert "hidden_size_x" in err and "did you mean --model.model_config.hidden_size?" in err


@pytest.mark.parametrize("args, fragment", [
    (["--model.model_config.router", "topK"], "Literal['topk', 'group_limited', 'himoe']. Got value: topK"),
    (["--model.model_config.qk_norm", "maybe"], "Expected a <class 'bool'>. Got value: maybe"),
    (["--model.model_config.hidden_size", "big"], "Expected a <class 'int'>. Got value: big"),
    (["--model.lr", "fast"], "Got value: fast"),
])
def test_value_of_the_wrong_type_fails_at_parse_time(args, fragment, capsys):
    err = _parse_error(args, capsys)
    assert args[0][2:] in err and fragment in err


def test_text_false_is_false(capsys):
    with pytest.raises(SystemExit):
        train.main(["fit", "--config", TINY, "--model.model_config.qk_norm", "false", "--print_config"])
    import yaml

    assert yaml.safe_load(capsys.readouterr().out)["model"]["model_config"]["qk_norm"] is False


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(lr=0.0), "lr=0.0 must be a finite number in (0, inf)"),
    (dict(lr=float("nan")), "lr=nan must be a finite number in (0, inf)"),
    (dict(lr="1e-3"), "lr='1e-3' must be a finite number"),
    (dict(weight_decay=-0.1), "weight_decay=-0.1 must be a finite number in [0, inf)"),
    (dict(weight_decay=float("inf")), "weight_decay=inf must be a finite number"),
    (dict(betas=(0.9, 1.0)), "betas[1]=1.0 must be a finite number in [0, 1)"),
    (dict(betas=(-0.1, 0.9)), "betas[0]=-0.1 must be a finite number in [0, 1)"),
    (dict(betas=(0.9,)), "betas=(0.9,) must be a pair (beta1, beta2)"),
    (dict(warmup_steps=-1), "warmup_steps=-1 must be an integer >= 0"),
    (dict(warmup_steps=1.5), "warmup_steps=1.5 must be an integer >= 0"),
    (dict(min_lr_ratio=1.5), "min_lr_ratio=1.5 must be a finite number in [0, 1]"),
    (dict(min_lr_ratio=-0.1), "min_lr_ratio=-0.1 must be a finite number in [0, 1]"),
    (dict(peak_tflops=0.0), "peak_tflops=0.0 must be a finite number in (0, inf)"),
    (dict(model_config={"num_expert": 4}), "model_config has no field 'num_expert' (did you mean 'num_experts'?)"),
    (dict(model_config={"capacity_factor": float("inf")}), "capacity_factor=inf must be a finite number"),
])
def test_bad_module_arguments_name_themselves(kwargs, fragment):
    with pytest.raises(ValueError) as err:
        HizooLightningModule(**kwargs)
    assert fragment in str(err.value)


def test_hyperparameters_hold_the_complete_plain_field_dict():
    module = HizooLightningModule(model_config={"hidden_size": 64, "num_attention_heads": 2}, betas=[0.8, 0.9])
    stored = module.hparams["model_config"]
    assert type(stored) is dict and set(stored) == set(config_field_types(HizooConfig))
    assert stored["hidden_size"] == 64 and stored["num_experts"] == HizooConfig().num_experts
    assert module.hparams["betas"] == (0.8, 0.9)
