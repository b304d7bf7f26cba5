"""Errors that describe a user's mistake; the CLI prints them as one line and exits with 2."""


class LmsuiteError(Exception):
    """Bad input from the user: a missing file, a bad config, a corrupt data file."""


class ConfigError(LmsuiteError, ValueError):
    """A config field is missing, of the wrong type or out of range."""


class DataFormatError(LmsuiteError, ValueError):
    """A data or checkpoint file is not what lmsuite expects."""


def reason(e: BaseException) -> str:
    """The first line of an exception's message, for one-line errors; PyTorch's refusal of a
    pickle that holds more than tensors (a six-line hint) said in words."""
    text = str(e).strip()
    if "Weights only load failed" in text or "weights_only" in text:
        return "holds pickled objects other than tensors, refused (weights_only=True)"
    return text.splitlines()[0] if text else type(e).__name__
