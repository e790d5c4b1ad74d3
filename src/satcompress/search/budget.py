"""Byte budgets: parse ``--budget`` values and print sizes.

A budget is a number of bytes on disk. It may be given as plain bytes (``1000000``,
``1000000B``), in decimal units (``885kB``, ``1MB``, ``1.5 MB``: 1 kB = 1000 B), in binary
units (``512KiB``, ``1MiB``: 1 KiB = 1024 B), or as a compression ratio of the input model
(``44x``: the input file's bytes divided by 44, rounded down). Units ignore case and spaces.
"""

from __future__ import annotations

import math
import numbers
import re
from fractions import Fraction

from satcompress.config import ConfigError

#: Bytes per unit, keyed by the lower-cased suffix.
UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}

ACCEPTED_FORMS = (
    "plain bytes (1000000, 1000000B), decimal units (885kB, 1MB, 1.5 MB, 2GB; 1 kB = 1000 B), "
    "binary units (512KiB, 1MiB, 1GiB; 1 KiB = 1024 B) or a ratio of the input model's size "
    "(44x = its bytes / 44)"
)

_PATTERN = re.compile(r"^(?P<value>(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)\s*(?P<unit>[a-z]*)$")


def parse_budget(text: str | int | float, reference_bytes: int | None = None) -> int:
    """A byte budget from a number or a string such as ``"1MB"``, ``"512 KiB"`` or ``"44x"``.

    Args:
        text: The budget: a positive number of bytes, or a string in one of the forms of
            :data:`ACCEPTED_FORMS`.
        reference_bytes: The input model's file size, needed by the ratio form ``"44x"``.

    Returns:
        The budget in bytes (fractions of a byte are rounded down), at least 1.

    Raises:
        ConfigError: If the value has none of the accepted forms, is not positive, or is a
            ratio while ``reference_bytes`` is None.
    """
    if isinstance(text, bool):
        raise _invalid(text)
    if isinstance(text, numbers.Real):
        return _checked(float(text), text)
    if not isinstance(text, str):
        raise _invalid(text)
    match = _PATTERN.match(text.strip().lower())
    if match is None:
        raise _invalid(text)
    value, unit = Fraction(match["value"]), match["unit"]  # exact: "4.35MB" is 4350000
    if unit == "x":
        return _from_ratio(value, reference_bytes, text)
    if unit not in UNITS:
        raise _invalid(text)
    return _checked(value * UNITS[unit], text)


def check_budget(text: str | int | float) -> None:
    """Check a budget's form without its value: a ratio such as ``"44x"`` needs no reference.

    For validating a config before the input model's size is known.

    Raises:
        ConfigError: If ``text`` has none of the accepted forms or is not positive.
    """
    if isinstance(text, str) and text.strip().lower().endswith("x"):
        parse_budget(text, reference_bytes=10**18)  # any reference large enough for the ratio
    else:
        parse_budget(text)


def format_bytes(n: float) -> str:
    """A size in decimal units with three significant digits: ``"1.00 MB"``, ``"885 kB"``.

    Args:
        n: A number of bytes (may be fractional, as predicted sizes are).

    Returns:
        ``"512 B"`` below 1000 bytes, otherwise kB, MB or GB.
    """
    if n < 0:
        return "-" + format_bytes(-n)
    if n < 999.5:
        return f"{n:.0f} B"
    for unit, scale in (("kB", 1e3), ("MB", 1e6), ("GB", 1e9)):
        text = _three_digits(n / scale)
        if float(text) < 1000 or unit == "GB":
            return f"{text} {unit}"
    raise AssertionError("unreachable")


def _three_digits(value: float) -> str:
    """``value`` printed with three significant digits (no exponent for values >= 1)."""
    if round(value, 2) < 10:
        return f"{value:.2f}"
    if round(value, 1) < 100:
        return f"{value:.1f}"
    return f"{value:.0f}"


def _from_ratio(ratio: Fraction, reference_bytes: int | None, text: str) -> int:
    """The budget for a compression ratio of ``reference_bytes``."""
    if reference_bytes is None:
        raise ConfigError(
            f"budget {text!r} is a ratio of the input model's size, but that size is not "
            "known here; give the budget in bytes instead (for example 1MB)"
        )
    if reference_bytes <= 0:
        raise ConfigError(f"reference size must be positive, got {reference_bytes} bytes")
    if not ratio > 0:
        raise ConfigError(f"budget ratio must be positive, got {text!r}")
    return _checked(reference_bytes / ratio, text)


def _checked(value: float | Fraction, text: object) -> int:
    """``value`` rounded down to whole bytes, refusing non-finite and sub-byte budgets."""
    if not math.isfinite(value) or value < 1:
        raise ConfigError(
            f"budget must be at least 1 byte, got {text!r}; accepted forms: {ACCEPTED_FORMS}"
        )
    return int(math.floor(value))


def _invalid(text: object) -> ConfigError:
    """The error for a budget in no accepted form."""
    return ConfigError(f"cannot read budget {text!r}; accepted forms: {ACCEPTED_FORMS}")
