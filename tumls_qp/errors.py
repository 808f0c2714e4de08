"""The errors tumls-qp raises on purpose.

Every message names what was wrong, what was received, and what to do about it.
The command line maps these classes to exit codes (``cli.EXIT_CODES``) and the
server maps them to HTTP statuses, each in one place.
"""

from __future__ import annotations

__all__ = [
    "TumlsQpError",
    "InvalidInputError",
    "ConfigError",
    "SlideOpenError",
    "MissingMppError",
    "NotBrightfieldError",
    "NoTissueError",
    "FormatVersionError",
    "OutputError",
    "DeviceError",
    "EngineError",
]


class TumlsQpError(Exception):
    """Base class of every error tumls-qp raises on purpose."""


class InvalidInputError(TumlsQpError):
    """An argument, a file or a request is not usable as given."""


class ConfigError(InvalidInputError):
    """A configuration value or file is invalid."""


class SlideOpenError(InvalidInputError):
    """A slide file is missing, is not a slide, or is damaged."""


class MissingMppError(InvalidInputError):
    """The slide does not say its pixel size and the caller did not give one."""


class NotBrightfieldError(InvalidInputError):
    """The slide does not look like a brightfield H&E slide (e.g. fluorescence)."""


class NoTissueError(InvalidInputError):
    """No (or too little) tissue was found to analyse."""


class FormatVersionError(InvalidInputError):
    """A file or folder was written in a format version this tumls-qp does not read (older or newer)."""


class OutputError(TumlsQpError):
    """Results cannot be written where they were asked for."""


class DeviceError(TumlsQpError):
    """The requested compute device is not available."""


class EngineError(TumlsQpError):
    """The distributed engine cannot run the work: no scheduler, no worker, mismatched software, workers dying."""
