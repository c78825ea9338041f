"""Thin command-line entry points (console scripts in pyproject.toml)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps

from w2v2_pretrain.errors import W2V2Error, one_line


def friendly_errors(main: Callable[..., object]) -> Callable[..., object]:
    """Print a project error as ``error: <one line>`` and exit 2, instead of a traceback."""

    @wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except W2V2Error as e:
            print(f"error: {one_line(e)}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper
