"""Where a shard's bytes come from, read with bounded retries.

Locations: a folder, an ``http(s)://`` URL prefix, any URL fsspec opens (``s3://``, ``gs://``,
... with its package installed), or ``pipe:COMMAND`` with ``{}`` where the shard's path goes
(``pipe:aws s3 cp s3://bucket/ls960/{} -``). A read that fails (a dropped connection, a server
that went away, a command that exited non-zero) is retried a bounded number of times
(`with_retries`), then stops with a `SourceUnavailable` naming the shard. This transport is
ours rather than lhotse's ``open_best`` because lhotse's neither times out nor retries (the
shards package's docstring says what else it lacks).
"""

from __future__ import annotations

import http.client
import io
import subprocess
import tarfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from time import sleep
from typing import IO

from w2v2_pretrain.errors import DataError, SourceUnavailable


class Location(str):
    """A shard folder or URL prefix; ``location / "train/recording.000000.tar"`` names a shard
    in it (a ``pipe:`` command puts the name where its ``{}`` is)."""

    def __truediv__(self, name: str) -> Location:
        if self.startswith("pipe:"):
            return Location(self.replace("{}", f"{name}{{}}", 1)) if "{}" in self else self
        return Location(f"{self.rstrip('/')}/{name}")

    @property
    def name(self) -> str:
        return self.rstrip("/").rsplit("/", 1)[-1]

    def command(self) -> str:
        """The shell command of a ``pipe:`` location (its ``{}`` dropped)."""
        return self.removeprefix("pipe:").replace("{}", "")


@dataclass(frozen=True)
class Transfer:
    """How patiently a location is read (``data.shard_retries``, ``data.shard_timeout``)."""

    retries: int = 3
    """Further tries after a failed open or read, each after twice the wait of the last."""
    timeout: float = 30.0
    """Seconds a connection may stay silent before the read counts as failed."""
    backoff: float = 1.0
    """Seconds before the first retry."""


class _Retryable(Exception):
    """A failure worth another try (the connection, not the data)."""


def open_location(location: Location, timeout: float) -> IO[bytes]:
    """A readable binary stream of one shard (or the index)."""
    if location.startswith("pipe:"):
        return _Pipe(location.command())
    if location.startswith(("http://", "https://")):
        try:
            return urllib.request.urlopen(location, timeout=timeout)  # noqa: S310 (http only)
        except urllib.error.HTTPError as e:
            if e.code in (408, 429) or e.code >= 500:
                raise _Retryable(f"HTTP {e.code} {e.reason}") from None
            raise DataError(f"{location}: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError) as e:
            raise _Retryable(str(getattr(e, "reason", e))) from None
    if "://" in location:
        try:
            import fsspec
        except ImportError:  # pragma: no cover (torch installs fsspec)
            raise DataError(f"{location}: reading this URL needs fsspec") from None
        try:
            return fsspec.open(location, "rb").open()
        except ImportError as e:
            raise DataError(f"{location}: {e}") from None
        except FileNotFoundError:
            raise DataError(f"{location}: not found") from None
        except OSError as e:
            raise _Retryable(str(e)) from None
    try:
        return open(location, "rb")
    except FileNotFoundError:
        raise DataError(f"{location}: not found") from None


class _Pipe(io.RawIOBase):
    """The standard output of a shell command as a stream; a non-zero exit is a failed read."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.proc = subprocess.Popen(
            command,
            shell=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,  # noqa: S602
        )

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.proc.stdout.readinto(buffer)
        if n == 0 and self.proc.wait() != 0:
            err = self.proc.stderr.read().decode(errors="replace").strip().splitlines()
            raise OSError(
                f"`{self.command}` exited {self.proc.returncode}: {err[-1] if err else ''}"
            )
        return n

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()
        super().close()


def with_retries(what: Location, transfer: Transfer, attempt: Callable[[], object]):
    """``attempt()``, tried again after a retryable failure at most ``transfer.retries`` times
    (waiting ``backoff``, then twice as long each time); then a `DataError` naming ``what``."""
    wait = transfer.backoff
    for tries in range(1, transfer.retries + 2):
        try:
            return attempt()
        except DataError:
            raise
        except (_Retryable, OSError, EOFError, tarfile.TarError, http.client.HTTPException) as e:
            reason = str(e) or type(e).__name__
            if tries > transfer.retries:
                raise SourceUnavailable(
                    f"{what}: {reason} (gave up after {tries} tries; data.shard_retries, "
                    "data.shard_timeout)"
                ) from None
            sleep(wait)
            wait *= 2
    raise AssertionError("unreachable")


def read_bytes(location: Location, transfer: Transfer) -> bytes:
    def attempt() -> bytes:
        with open_location(location, transfer.timeout) as f:
            return f.read()

    return with_retries(location, transfer, attempt)
