"""Errors users see as one line: the entry points print ``error: <message>`` and exit 2."""


class W2V2Error(Exception):
    """Base class: a bad input or setting, with a message that names the file/field and cause."""


class DataError(W2V2Error):
    """A manifest, audio file or directory that cannot be used."""


class SourceUnavailable(DataError):
    """Where the data is stored failed (a server gone, a dropped connection retried in vain),
    not one file: the run stops, checkpointed, instead of skipping the file."""


class ConfigError(W2V2Error, ValueError):
    """A configuration value that is out of range or inconsistent."""


class TrainingError(W2V2Error):
    """A run that cannot go on (e.g. repeated non-finite updates); a checkpoint was written."""


class CheckpointWriteError(TrainingError):
    """A checkpoint could not be written (full disk, quota, I/O error); the message says which
    checkpoint is intact."""


class NonFiniteStop(TrainingError):
    """``max_bad_updates`` updates in a row were skipped (updates ``first`` to ``last``);
    `train` turns it into the advice, naming the checkpoint to go back to."""

    def __init__(self, first: int, last: int) -> None:
        super().__init__(
            f"{last - first + 1} updates in a row (updates {first} to {last}) were skipped for "
            "non-finite loss or gradients or no usable audio"
        )
        self.first, self.last = first, last


def one_line(exc: BaseException) -> str:
    """The user-facing line of an error, also when a DataLoader worker re-raised it.

    A worker re-raises with ``Caught DataError in DataLoader worker ...`` and the worker's
    traceback prepended; the original message is the text after the final ``DataError: ``.
    """
    text = str(exc).strip()
    name = type(exc).__name__ + ": "
    if "Original Traceback" in text and name in text:
        text = text.rsplit(name, 1)[1]
    return text.splitlines()[0] if text else type(exc).__name__
