"""Typing raw table cells: numbers, booleans and categories, with missing = None.

Tables are read as strings (nothing guessed by pandas), then each feature's cells are typed by
the schema. A cell that cannot be typed becomes missing and the caller records a warning: a
typo in one cell must not drop a whole patient, but it must never pass silently either.
"""

from __future__ import annotations

import math
import re

# Spellings of "no value" seen in real exports (empty cells, spreadsheets, R, pandas dumps).
MISSING = {
    "",
    "na",
    "n/a",
    "nan",
    "none",
    "null",
    "unknown",
    "unk",
    "?",
    "-",
    "missing",
    "not available",
}

TRUE = {"true", "t", "yes", "y", "1", "1.0", "present", "x"}
FALSE = {"false", "f", "no", "n", "0", "0.0", "absent"}

_NUMBER = re.compile(r"^[+-]?(\d+([.,]\d*)?|[.,]\d+)([eE][+-]?\d+)?$")


class Unparseable(ValueError):
    """A non-missing cell that does not fit its feature type."""


class NonFinite(Unparseable):
    """A number too large for a float ('1e999'): it would be infinity."""


def is_missing(cell: str | None) -> bool:
    return cell is None or cell.strip().lower() in MISSING


def parse_number(cell: str | None) -> float | None:
    """'3.5' -> 3.5, '3,5' -> 3.5 (decimal comma), '' -> None; anything else raises Unparseable
    (NonFinite for a number that overflows a float, such as 1e999)."""
    if is_missing(cell):
        return None
    text = cell.strip()
    if not _NUMBER.match(text):
        raise Unparseable(text)
    value = float(text.replace(",", "."))
    if not math.isfinite(value):
        raise NonFinite(text)
    return value


def out_of_range(value: float, feature: dict) -> str | None:
    """Why `value` is outside the feature's plausible range (schema `min`/`max`), or None."""
    lo, hi = feature.get("min"), feature.get("max")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        low = "-inf" if lo is None else f"{lo:g}"
        high = "inf" if hi is None else f"{hi:g}"
        return f"outside the plausible range [{low}, {high}]"
    return None


# Cells that held bytes that are not UTF-8: the table reader replaces them with U+FFFD.
UNDECODABLE = "\ufffd"


def is_undecodable(cell: str | None) -> bool:
    return cell is not None and UNDECODABLE in cell


def parse_bool(cell: str | None) -> bool | None:
    """'True'/'yes'/'1' -> True, 'False'/'no'/'0' -> False, '' -> None; else Unparseable."""
    if is_missing(cell):
        return None
    text = cell.strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise Unparseable(cell.strip())


def parse_category(cell: str | None) -> str | None:
    """Categories are kept verbatim (stripped); numbers written as '2.0' become '2'."""
    if is_missing(cell):
        return None
    text = cell.strip()
    if _NUMBER.match(text):
        value = float(text.replace(",", "."))
        if value.is_integer():
            return str(int(value))
    return text


PARSERS = {"numerical": parse_number, "boolean": parse_bool, "categorical": parse_category}


def parse_cell(cell: str | None, kind: str):
    """Type one cell by feature type ('numerical', 'boolean' or 'categorical')."""
    return PARSERS[kind](cell)
