"""The JSON form of hizoo's diagnostics dataclasses (report.json, the study's results.json).

A record's ``to_dict`` lists its fields in declaration order and leaves out those that are None (a metric that
does not apply to the model is absent from the JSON, as it always was); ``from_dict`` reads that form back,
building the nested records that ``NESTED`` names and refusing a key that is not a field."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, ClassVar


def _plain(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class Record:
    """Mixin for the report dataclasses. ``NESTED``: field name -> record class (a list field holds a list of it)."""

    NESTED: ClassVar[dict[str, type]] = {}

    def to_dict(self) -> dict:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_dict(cls, data: dict):
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"{cls.__name__} has no fields {unknown}; its fields are {names}")
        values = {}
        for key, value in data.items():
            kind = cls.NESTED.get(key)
            if kind is not None and value is not None:
                value = [kind.from_dict(v) for v in value] if isinstance(value, list) else kind.from_dict(value)
            values[key] = value
        return cls(**values)
