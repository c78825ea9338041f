"""Plumbing for the config dataclasses of models/config.py: the rules a field must follow, and
nested plain data (a checkpoint's config, a Hydra node) to and from dataclasses, with errors
that name the dotted field. Nothing here knows wav2vec 2.0."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from w2v2_pretrain.choice import Choice
from w2v2_pretrain.errors import ConfigError


@dataclass(frozen=True)
class Check:
    """One rule of a config: whether it holds, the field it is about (relative to its part;
    empty for the part as a whole) and what the field must be."""

    ok: bool
    name: str
    why: str


def raise_first_failure(parts: list[tuple[str, Any]], root: str) -> None:
    """A one-line `ConfigError` for the first rule that does not hold; ``parts``: (dotted
    prefix, object with ``checks()``) pairs, named under ``root``."""
    for prefix, part in parts:
        for check in part.checks():
            if not check.ok:
                name = f"{prefix}{check.name}" if check.name else prefix.rstrip(".")
                raise ConfigError(f"{root}.{name}: {check.why}")


def to_plain(obj: Any) -> dict[str, Any]:
    """A dataclass as nested plain data, choices as their names."""
    return dataclasses.asdict(
        obj, dict_factory=lambda kv: {k: str(v) if isinstance(v, Choice) else v for k, v in kv}
    )


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested plain data as one level of dotted keys: ``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        out |= flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
    return out


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """The inverse of `flatten`."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = nested
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return nested


def build(
    cls: type,
    data: dict[str, Any],
    where: str,
    parts: Mapping[str, type],
    coerce: Mapping[str, Callable[[Any], Any]],
) -> Any:
    """``cls`` from nested plain data: ``parts`` maps the fields that are dataclasses of their
    own, ``coerce`` converts the values of the fields it names; an unknown field or a part
    that is not a mapping is a `ConfigError` naming the dotted field."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; known: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        if name in parts:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{name}: expected a mapping, got {value!r}")
            value = build(parts[name], dict(value), f"{where}.{name}", {}, coerce)
        elif name in coerce:
            value = coerce[name](value)
        kwargs[name] = value
    return cls(**kwargs)
