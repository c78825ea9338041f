"""Errors users see as one line: the entry points print ``error: <message>`` and exit 2."""


class W2V2Error(Exception):
    """Base class: a bad input or setting, with a message that names the file/field and cause."""


class DataError(W2V2Error):
    """A manifest, audio file or directory that cannot be used."""


class ConfigError(W2V2Error, ValueError):
    """A configuration value that is out of range or inconsistent."""


class TrainingError(W2V2Error):
    """A run that cannot go on (e.g. repeated non-finite updates); a checkpoint was written."""


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
