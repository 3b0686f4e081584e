"""HizooConfigFields: HizooConfig's own fields as a frozen dataclass, the typed ``model_config`` of LightningCLI.

Generated once from HizooConfig's annotated fields (names, types, defaults; the field comments become the help
text), so HizooConfig stays the single source: a field added there appears here, in ``python train.py fit --help``
(``--model.model_config.FIELD``) and in YAML configs (``model: {model_config: {FIELD: value}}``) without any
other change. LightningCLI (jsonargparse) then rejects a misspelled field and a value of the wrong type at parse
time; fields registered in ``FIELD_CHOICES`` are typed ``Literal[...]`` so a misspelled choice fails there too.
Constructing an instance validates the whole config with HizooConfig's own checks.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import textwrap
import typing
from collections.abc import Mapping

from transformers import PreTrainedConfig

from .configuration import FIELD_CHOICES, HizooConfig, config_field_types, unknown_field_message

_FIELD_LINE = re.compile(r"^\s{4}(\w+)\s*:[^=]+=[^#]*(?:#\s*(.*))?$")


def _field_help(config_class: type) -> dict[str, str]:
    """Each field's comment in the class sources: its trailing comment, else the comment block right above it."""
    helps = {}
    for klass in reversed(config_class.__mro__[: config_class.__mro__.index(PreTrainedConfig)]):
        try:
            lines = textwrap.dedent(inspect.getsource(klass)).splitlines()
        except (OSError, TypeError):  # no source (frozen or zipped install): fields keep their type and default
            continue
        block = []
        for line in lines:
            stripped = line.strip()
            if stripped.startswith("#") and not stripped.startswith("# ---"):
                block.append(stripped.lstrip("#").strip())
                continue
            match = _FIELD_LINE.match(line)
            if match and (match.group(2) or block):
                helps[match.group(1)] = match.group(2) or " ".join(block)
            block = []
    return helps


def fields_dataclass(config_class: type, name: str) -> type:
    """A frozen dataclass with ``config_class``'s own fields (types, defaults, help); constructing it validates
    the values by constructing ``config_class``."""
    types = config_field_types(config_class)
    defaults = {f.name: f for f in dataclasses.fields(config_class)}
    spec = []
    for field_name, hint in types.items():
        if field_name in FIELD_CHOICES:
            choice = typing.Literal[FIELD_CHOICES[field_name]]
            hint = choice | None if type(None) in typing.get_args(hint) else choice
        field = defaults[field_name]
        if field.default_factory is not dataclasses.MISSING:
            spec.append((field_name, hint, dataclasses.field(default_factory=field.default_factory)))
        else:
            spec.append((field_name, hint, dataclasses.field(default=field.default)))

    def validate(self) -> None:
        config_class(**dataclasses.asdict(self))  # ValueError naming the field, the value and what is allowed

    cls = dataclasses.make_dataclass(name, spec, frozen=True, kw_only=True, namespace={"__post_init__": validate})
    cls.__module__ = __name__
    helps = _field_help(config_class)
    cls.__doc__ = (f"{config_class.__name__}'s fields; vocab_size is replaced by the tokenizer's size when a data "
                   "module is attached.\n\nArgs:\n"
                   + "".join(f"    {field}: {helps[field]}\n" for field in types if field in helps))
    return cls


HizooConfigFields = fields_dataclass(HizooConfig, "HizooConfigFields")
FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(HizooConfigFields))


def model_config_dict(value: HizooConfigFields | Mapping | HizooConfig | None) -> dict:
    """Every HizooConfig field -> its value, validated, from a HizooConfigFields (what LightningCLI passes), a
    mapping of some fields (the rest take their defaults; a misspelled name raises naming the closest field) or a
    HizooConfig. A plain dict of plain values, so checkpoints store it without pickling a hizoo class."""
    if value is None:
        value = {}
    if isinstance(value, HizooConfig):
        value = {name: getattr(value, name) for name in FIELD_NAMES}
    if isinstance(value, HizooConfigFields):
        return dataclasses.asdict(value)
    if not isinstance(value, Mapping):
        raise TypeError(f"model_config={value!r} must be a mapping of HizooConfig fields, a HizooConfigFields or a "
                        f"HizooConfig; got {type(value).__name__}")
    unknown = [key for key in value if key not in FIELD_NAMES]
    if unknown:
        raise ValueError("; ".join(unknown_field_message("model_config", str(key), FIELD_NAMES) for key in unknown)
                         + ". HizooConfig's fields are listed by `python train.py fit --help`.")
    return dataclasses.asdict(HizooConfigFields(**value))
