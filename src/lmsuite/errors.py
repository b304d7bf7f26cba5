"""Errors that describe a user's mistake; the CLI prints them as one line and exits with 2."""


class LmsuiteError(Exception):
    """Bad input from the user: a missing file, a bad config, a corrupt data file."""


class ConfigError(LmsuiteError, ValueError):
    """A config field is missing, of the wrong type or out of range."""


class DataFormatError(LmsuiteError, ValueError):
    """A data or checkpoint file is not what lmsuite expects."""
