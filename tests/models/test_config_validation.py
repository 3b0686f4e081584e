"""HizooConfig rejects unknown fields (naming the closest one), values of the wrong type and non-finite numbers, at
construction, while every key transformers itself writes into a config.json still loads."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from hizoo import HizooConfig, HizooForCausalLM
from hizoo.models.config_fields import FIELD_NAMES, HizooConfigFields, model_config_dict
from hizoo.models.configuration import FIELD_CHOICES, INFINITE_ALLOWED, config_field_types

TINY = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
FIELD_TYPES = config_field_types(HizooConfig)


def _fields_of(kind) -> list[str]:
    """HizooConfig's fields whose annotation is ``kind`` or ``kind | None`` (new fields are picked up here too)."""
    return [name for name, hint in FIELD_TYPES.items() if hint is kind or hint == (kind | None)]


@pytest.mark.parametrize("typo, closest", [("num_expert", "num_experts"), ("routr", "router"),
                                           ("hidden_size_x", "hidden_size"), ("n_stream", "n_streams")])
def test_unknown_field_is_rejected_naming_the_closest(typo, closest):
    with pytest.raises(ValueError, match=rf"no field '{typo}' \(did you mean '{closest}'\?\)"):
        HizooConfig(**{typo: 4})


def test_unknown_field_without_a_close_name_and_unsupported_transformers_options():
    with pytest.raises(ValueError, match=r"no field 'zzz_qqq'\. HizooConfig's fields are listed"):
        HizooConfig(zzz_qqq=1)
    with pytest.raises(ValueError, match="'per_layer_config': hizoo's model does not implement"):
        HizooConfig(per_layer_config=[{}])
    # RoPE scaling is implemented: the legacy rope_scaling key is read as rope_parameters (tests/models/test_conventions.py)
    assert HizooConfig(rope_scaling={"rope_type": "linear", "factor": 2.0}).rope_parameters["factor"] == 2.0


def test_typo_in_a_config_json_is_rejected_on_load(tmp_path):
    HizooConfig(**TINY).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data["num_expert"] = 4
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="'num_expert' \\(did you mean 'num_experts'\\?\\)"):
        AutoConfig.from_pretrained(tmp_path)


def test_model_round_trip_through_save_and_from_pretrained(tmp_path):
    config = HizooConfig(**TINY, ffn="moe", num_experts=4, num_experts_per_tok=2, residual="hc", n_streams=2,
                         eos_token_id=[1, 2])
    model = HizooForCausalLM(config).eval()
    model.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert {"architectures", "transformers_version", "model_type"} <= set(written)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 64, (1, 6))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
    # every key to_dict() produces (transformers' own included) is accepted back
    again = HizooConfig(**loaded.config.to_dict())
    assert {n: getattr(again, n) for n in FIELD_NAMES} == {n: getattr(config, n) for n in FIELD_NAMES}


def test_config_json_written_by_older_transformers_loads(tmp_path):
    """Keys transformers 4.x wrote into config.json (dtype as torch_dtype, generation keys, torchscript, ...)."""
    old = {**TINY, "model_type": "hizoo", "architectures": ["HizooForCausalLM"], "torch_dtype": "float32",
           "transformers_version": "4.46.3", "_name_or_path": "runs/x/hf_model", "output_hidden_states": False,
           "auto_map": {"AutoConfig": "configuration.HizooConfig"}, "use_bfloat16": False, "torchscript": False,
           "tie_encoder_decoder": False, "is_decoder": False, "pruned_heads": {}, "max_length": 20,
           "do_sample": False, "num_beams": 1, "_attn_implementation_autoset": True}
    (tmp_path / "config.json").write_text(json.dumps(old))
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, HizooConfig) and config.hidden_size == 32 and config.dtype == torch.float32


# ------------------------------------------------------------------ values: every field of a kind, then a table
@pytest.mark.parametrize("name", _fields_of(float))
def test_every_float_field_rejects_nan_text_and_inf_unless_inf_is_meaningful(name):
    with pytest.raises(ValueError, match=rf"{name}=nan must be a finite number"):
        HizooConfig(**{name: float("nan")})
    with pytest.raises(ValueError, match=rf"{name}='0.5' \(str\) must be a finite number"):
        HizooConfig(**{name: "0.5"})
    with pytest.raises(ValueError, match=rf"{name}=True \(bool\) must be a finite number"):
        HizooConfig(**{name: True})
    if name in INFINITE_ALLOWED:
        assert math.isinf(getattr(HizooConfig(**{name: float("inf")}), name))
        with pytest.raises(ValueError, match=rf"{name}=-inf must be a finite number or \+inf"):
            HizooConfig(**{name: float("-inf")})
    else:
        with pytest.raises(ValueError, match=rf"{name}=inf must be a finite number"):
            HizooConfig(**{name: float("inf")})


@pytest.mark.parametrize("name", _fields_of(bool))
def test_every_bool_field_rejects_text_and_numbers(name):
    for value in ("false", 0, 1.0, None):
        with pytest.raises(ValueError, match=rf"{name}={value!r} \({type(value).__name__}\) must be True or False"):
            HizooConfig(**{name: value})


@pytest.mark.parametrize("name", _fields_of(int))
def test_every_int_field_rejects_text_fractions_and_bools(name):
    for value in ("4", 2.5, True):
        with pytest.raises(ValueError, match=rf"{name}={value!r} \({type(value).__name__}\) must be an integer"):
            HizooConfig(**{name: value})


@pytest.mark.parametrize("name", sorted(FIELD_CHOICES))
def test_every_choice_field_names_the_allowed_values(name):
    with pytest.raises(ValueError, match=rf"{name}='no-such' is not allowed; choose one of '{FIELD_CHOICES[name][0]}'"):
        HizooConfig(**{name: "no-such"})


def test_numpy_scalars_become_python_numbers():
    config = HizooConfig(hidden_size=np.int64(256), rope_theta=np.float32(1e4))
    assert type(config.hidden_size) is int and type(config.rope_theta) is float
    assert json.loads(config.to_json_string())["hidden_size"] == 256


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(capacity_factor=float("nan")), "capacity_factor=nan must be a finite number"),
    (dict(capacity_factor=float("inf")), "capacity_factor=inf must be a finite number"),
    (dict(capacity_factor="2"), "capacity_factor='2' (str) must be a finite number or None"),
    (dict(capacity_factor=0.0), "capacity_factor=0.0 must be None (dropless) or a number > 0"),
    (dict(router_aux_loss_coef=float("inf")), "router_aux_loss_coef=inf must be a finite number"),
    (dict(himoe_lambda_intra=-1.0), "himoe_lambda_intra=-1.0 must be a number >= 0"),
    (dict(qk_norm="false"), "qk_norm='false' (str) must be True or False"),
    (dict(num_experts="8"), "num_experts='8' (str) must be an integer"),
    (dict(hidden_size="512"), "hidden_size='512' (str) must be an integer"),
    (dict(num_key_value_heads="2"), "num_key_value_heads='2' (str) must be an integer or None"),
    (dict(eos_token_id=[1, "2"]), "eos_token_id=[1, '2'] (list) must be an integer or a list of integers or None"),
    (dict(eos_token_id=70000), "eos_token_id=70000 must be None or in [0, vocab_size=32000)"),
    (dict(eos_token_id=[1, -1]), "eos_token_id=[1, -1] must be None or in [0, vocab_size=32000)"),
    (dict(router="Topk"), "router='Topk' is not allowed; choose one of 'topk', 'group_limited', 'himoe'"),
    (dict(himoe_max_lambda_ratio=0.0), "himoe_max_lambda_ratio=0.0 must be a number > 0"),
    (dict(initializer_range=float("inf")), "initializer_range=inf must be a finite number"),
])
def test_bad_values_name_field_value_and_what_is_allowed(kwargs, fragment):
    with pytest.raises(ValueError) as err:
        HizooConfig(**kwargs)
    assert fragment in str(err.value)


# ------------------------------------------------------------------ the typed config of LightningCLI
def test_config_fields_mirror_hizoo_config():
    """One field per HizooConfig field (PreTrainedConfig's own are not model fields), same defaults and types,
    choices as Literal types."""
    defaults = {f.name: f.default for f in dataclasses.fields(HizooConfig)}
    fields = {f.name: f for f in dataclasses.fields(HizooConfigFields)}
    assert list(fields) == list(FIELD_TYPES)
    assert "architectures" not in fields and "dtype" not in fields
    for name, field in fields.items():
        assert field.default == defaults[name] or (field.default != field.default and defaults[name] != defaults[name])
        if name not in FIELD_CHOICES:
            assert field.type == FIELD_TYPES[name]
    assert fields["router"].type.__args__ == FIELD_CHOICES["router"]
    assert dataclasses.asdict(HizooConfigFields()) == {n: defaults[n] for n in FIELD_NAMES}


def test_model_config_dict_validates_and_completes():
    full = model_config_dict({"hidden_size": 64, "num_attention_heads": 2})
    assert set(full) == set(FIELD_NAMES) and full["hidden_size"] == 64 and full["router"] == "topk"
    assert model_config_dict(HizooConfigFields(hidden_size=64, num_attention_heads=2)) == full
    assert model_config_dict(HizooConfig(hidden_size=64, num_attention_heads=2))["head_dim"] == 32
    with pytest.raises(ValueError, match=r"model_config has no field 'routr' \(did you mean 'router'\?\)"):
        model_config_dict({"routr": "himoe"})
    with pytest.raises(ValueError, match="n_streams=0 must be an integer >= 1"):
        HizooConfigFields(n_streams=0)
    with pytest.raises(TypeError, match="model_config=5 must be a mapping"):
        model_config_dict(5)


def test_a_field_added_to_the_config_appears_in_the_typed_config(monkeypatch):
    """What happens when a field is added to HizooConfig: here to a subclass, with a choice and a comment."""
    from hizoo.models.config_fields import fields_dataclass

    class Extended(HizooConfig):
        probe_seed: int = 0  # seed of the probe
        probe_mode: str = "alpha"

    monkeypatch.setitem(FIELD_CHOICES, "probe_mode", ("alpha", "beta"))
    fields_class = fields_dataclass(Extended, "ExtendedFields")
    fields = {f.name: f for f in dataclasses.fields(fields_class)}
    assert fields_class.__name__ == "ExtendedFields"
    assert fields["probe_seed"].type is int and fields["probe_seed"].default == 0
    assert fields["probe_mode"].type.__args__ == ("alpha", "beta")
    assert "probe_seed: seed of the probe" in fields_class.__doc__
    with pytest.raises(ValueError, match=r"probe_seed='1' \(str\) must be an integer"):
        fields_class(probe_seed="1")
    with pytest.raises(ValueError, match=r"Extended has no field 'probe_mod' \(did you mean 'probe_mode'\?\)"):
        Extended(probe_mod="beta")
