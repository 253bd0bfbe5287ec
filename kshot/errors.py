"""Exceptions a user can cause, with messages that name the field or file, the expectation and the finding."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class KshotError(ValueError):
    """Base class of every error caused by user input (config, files, checkpoints)."""


class ConfigError(KshotError):
    """A parameter is missing, unknown or out of range."""


class DataError(KshotError):
    """A dataset file or folder is missing, corrupt, or too small for the request."""


class CheckpointError(KshotError):
    """A checkpoint is corrupt, unsafe, or of another architecture."""


def suggest(name: str, valid: Iterable[str]) -> str:
    """Return ' (did you mean 'x'?)' for the closest valid name, or '' when none is close."""
    close = difflib.get_close_matches(str(name), [str(v) for v in valid], n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def check_choice(field: str, value: object, valid: Iterable[str]) -> None:
    """Raise a :class:`ConfigError` naming ``field`` unless ``value`` is one of ``valid``."""
    valid = list(valid)
    if value not in valid:
        raise ConfigError(f"{field}: expected one of {valid}, found {value!r}{suggest(str(value), valid)}")


def unknown(field: str, name: object, valid: Iterable[str]) -> ConfigError:
    """Build the error for ``field`` naming an unknown ``name``; lists the valid names and the closest."""
    valid = sorted(valid)
    return ConfigError(f"{field}: unknown value '{name}'{suggest(str(name), valid)}; expected one of {valid}")


def yaml_error(path: object, err: Exception) -> ConfigError:
    """One-line error for a YAML syntax error in ``path``: the line, column and problem, no caret art."""
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(err, "problem", None) or " ".join(str(err).split())
    return ConfigError(f"params file '{path}': expected valid YAML, found a syntax error{where}: {problem}")


def finding(err: BaseException) -> str:
    """A library's error message as the ``found ...`` part of ours: one line, without a leading
    ``Found`` of its own (torchvision's "Found no valid file ..." would read "found Found no ...")."""
    text = " ".join(str(err).split())
    if text[:6].lower() == "found ":
        text = text[6:]
    return text[:1].lower() + text[1:] if text[:2] != text[:2].upper() else text
