"""Parameter-name tables between our modules and another implementation's."""

from __future__ import annotations

import re


class Renames:
    """Prefix pairs (ours, theirs); ``{i}`` stands for a layer index. The first pair that
    matches wins, in both directions, so put the more specific prefix first."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = pairs
        self._compiled = {
            direction: [(_pattern(src), _template(dst)) for src, dst in oriented]
            for direction, oriented in (
                ("out", pairs),
                ("in", [(theirs, ours) for ours, theirs in pairs]),
            )
        }

    def _apply(self, name: str, direction: str) -> str:
        for pattern, template in self._compiled[direction]:
            new, n = pattern.subn(template, name)
            if n:
                return new
        raise KeyError(name)

    def to_theirs(self, name: str) -> str:
        """Our parameter name as theirs; KeyError if no pair matches."""
        return self._apply(name, "out")

    def to_ours(self, name: str) -> str:
        """Their parameter name as ours; KeyError if no pair matches."""
        return self._apply(name, "in")


def _pattern(prefix: str) -> re.Pattern:
    return re.compile("^" + re.escape(prefix).replace(re.escape("{i}"), r"(\d+)"))


def _template(prefix: str) -> str:
    return prefix.replace("{i}", r"\1")
