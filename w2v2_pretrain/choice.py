"""Settings that take one of a few names (``mode``, ``collate``, ``on_bad_file``, ``verify``).

Each is one `Choice` enum, parsed once where the setting enters (the config or the data
module), so the rest of the code compares enum members, never strings. Member names equal their
values, which is what lets OmegaConf type-check ``model.feature_encoder.mode=layer_norm``.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from w2v2_pretrain.errors import ConfigError


class Choice(str, Enum):
    """A named option; ``parse`` turns user input into a member or a one-line `ConfigError`."""

    @classmethod
    def parse(cls, value: Any, field: str) -> Choice:
        if isinstance(value, cls):
            return value
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(repr(m.value) for m in cls)
            raise ConfigError(f"{field}: expected one of {names}, got {value!r}") from None

    def __str__(self) -> str:
        return self.value
