"""Exceptions tvmptq raises on purpose; each carries the exit code the CLI returns for it."""


class TvmptqError(Exception):
    """Base class of every error tvmptq reports to the user."""

    exit_code = 2


class ConfigError(TvmptqError):
    """Bad options or settings, e.g. an unsupported bit width."""

    exit_code = 2


class DataError(TvmptqError):
    """Calibration or evaluation data that is missing, unreadable or unusable."""

    exit_code = 3


class ShapeError(DataError):
    """Data whose shape does not fit what the model expects."""


class ModelError(TvmptqError):
    """A model that cannot be found, built, loaded or traced."""

    exit_code = 4


class UnsupportedOpError(ModelError):
    """A model containing an operator tvmptq cannot quantize."""
