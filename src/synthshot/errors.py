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


def describe_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """`key: old -> new` for every value that differs, nested keys dotted, values in full (a path
    is never shortened: the part that differs may be anywhere in it)."""
    import json

    def text(value) -> str:
        return value if isinstance(value, str) else json.dumps(value, sort_keys=True)

    changes = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            changes += describe_changes(a, b, f"{prefix}{key}.")
        else:
            changes.append(f"{prefix}{key}: {text(a)} -> {text(b)}")
    return changes
