"""User-facing errors: raised with a one-line message that names the file, key or value at fault
and says what to do. The CLI prints them without a traceback and exits non-zero."""


class SynthshotError(Exception):
    """Base class of every error caused by the user's input or environment."""


class ConfigError(SynthshotError):
    """A config file or override that does not parse or does not validate."""


class DataError(SynthshotError):
    """A dataset, split, image or manifest that cannot be used as given."""


class ModelError(SynthshotError):
    """A model that cannot be found, loaded, or combined with the others."""
