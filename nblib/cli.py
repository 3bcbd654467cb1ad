"""Checked numeric arguments for the command lines (``argparse`` ``type=`` helpers), defined once.

    ap.add_argument("--batch-size", type=cli.int_in(1), default=64)
    ap.add_argument("--n-boot", type=cli.int_in(1, 100_000), default=1000)
    ap.add_argument("--level", type=cli.float_in(0, 1, low_open=True, high_open=True), default=0.95)
    ap.add_argument("--max-len", **cli.from_setting(PredictSettings, "max_len"))  # type, range, default, help

A value out of range (or not a number) stops the command before any work, with argparse's usual
``error: argument --batch-size: …`` line that names the parameter and the allowed range. An option that is
a notebook setting too takes its type, range, default and help from the settings field (:func:`from_setting`),
so that the command line and the notebook accept the same values.
"""

from __future__ import annotations

import argparse
import math
import typing
from collections.abc import Callable
from typing import Any, Literal

from . import settings
from .settings import StudySettings, flat_fields, help_of, range_of
from .sheets import Params

__all__ = [
    "SHEET_PARAMS",
    "add_sheet_options",
    "float_in",
    "from_setting",
    "int_in",
    "int_list",
    "positive_int",
    "sheet_choice",
]


def _range_words(low: float | None, high: float | None, low_open: bool = False, high_open: bool = False) -> str:
    """The allowed range in words, e.g. ``≥ 1``, ``from 1 to 512``, ``> 0 and < 1``."""
    lo = None if low is None else f"{'>' if low_open else '≥'} {low:g}"
    hi = None if high is None else f"{'<' if high_open else '≤'} {high:g}"
    if lo and hi and not (low_open or high_open):
        return f"from {low:g} to {high:g}"
    return " and ".join(w for w in (lo, hi) if w) or "any number"


def int_in(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type`` that accepts whole numbers from ``low`` to ``high`` (both included; None: no bound).

    Args:
        low: the smallest value allowed.
        high: the largest value allowed.
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a whole number; give one {_range_words(low, high)}"
            ) from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value} is out of range: give a whole number {_range_words(low, high)}")
        return value

    parse.__name__ = "whole number"  # argparse's "invalid <name> value" fallback
    return parse


def positive_int(text: str) -> int:
    """An argparse ``type`` for a whole number ≥ 1 (batch sizes, lengths, counts).

    Args:
        text: the argument as typed.
    """
    return int_in(1)(text)


def float_in(
    low: float | None = None, high: float | None = None, low_open: bool = False, high_open: bool = False
) -> Callable[[str], float]:
    """An argparse ``type`` that accepts finite numbers between ``low`` and ``high``.

    Args:
        low: the lower bound (None: none).
        high: the upper bound (None: none).
        low_open: ``low`` itself is not allowed.
        high_open: ``high`` itself is not allowed.
    """
    words = _range_words(low, high, low_open, high_open)

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number; give one {words}") from None
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if not math.isfinite(value) or too_low or too_high:
            raise argparse.ArgumentTypeError(f"{value:g} is out of range: give a number {words}")
        return value

    parse.__name__ = "number"
    return parse


def int_list(low: int | None = 0) -> Callable[[str], list[int]]:
    """An argparse ``type`` for a comma-separated list of whole numbers, each ``≥ low`` (e.g. folds ``0,2``; an
    empty string is an empty list).

    Args:
        low: the smallest value allowed (None: no bound).
    """
    one = int_in(low)

    def parse(text: str) -> list[int]:
        return [one(part.strip()) for part in text.split(",") if part.strip()]

    parse.__name__ = "list of whole numbers"
    return parse


def _int_bounds(r: settings.Range) -> tuple[int | None, int | None]:
    """The least and greatest whole number a settings range allows (None: no bound)."""
    low = r.ge if r.ge is not None else (math.floor(r.gt) + 1 if r.gt is not None else None)
    high = r.le if r.le is not None else (math.ceil(r.lt) - 1 if r.lt is not None else None)
    return (None if low is None else math.ceil(low)), (None if high is None else math.floor(high))


def from_setting(cls: type, name: str) -> dict[str, Any]:
    """``add_argument`` keywords for an option that is the setting ``name`` of the settings class ``cls``: numbers
    are checked against the range declared on the field (named in the help), Literal values are the choices, and
    ``dest``, ``default`` and ``help`` are the field's, so the command line and the notebook accept the same values.

        ap.add_argument("--n-boot", **cli.from_setting(settings.PredictSettings, "n_boot"))

    Args:
        cls: the settings dataclass that declares the setting.
        name: the setting's (flat) name.
    """
    field, hint = flat_fields(cls)[name], settings.flat_types(cls)[name]
    members = [m for m in settings.union_args(hint) if m is not type(None)]
    default = settings.defaults(cls)[name]
    kwargs: dict[str, Any] = {"dest": name, "default": default, "help": help_of(field)}
    literal = [m for m in members if typing.get_origin(m) is Literal]
    bounds = range_of(field) or settings.Range()
    if literal:
        kwargs["choices"] = typing.get_args(literal[0])
        return kwargs
    if int in members:
        low, high = _int_bounds(bounds)
        kwargs["type"], words = int_in(low, high), _range_words(low, high)
    elif float in members:
        low, high = (bounds.ge if bounds.gt is None else bounds.gt), (bounds.le if bounds.lt is None else bounds.lt)
        low_open, high_open = bounds.gt is not None, bounds.lt is not None
        kwargs["type"] = float_in(low, high, low_open=low_open, high_open=high_open)
        words = _range_words(low, high, low_open, high_open)
    else:
        return kwargs
    if words != "any number":
        kwargs["help"] += f" ({words})"
    return kwargs


def sheet_choice(text: str) -> str | int:
    """An argparse ``type`` for a sheet of a workbook: a whole number selects by 0-based position (as the
    notebooks' ``sheet`` parameter does), anything else by name.

    Args:
        text: the argument as typed.
    """
    stripped = text.strip()
    if stripped.lstrip("-").isdigit():
        return int_in(*_int_bounds(range_of(_SHEET_FIELDS["sheet"]) or settings.Range()))(stripped)
    return text


_SHEET_FIELDS = flat_fields(StudySettings)  # the ranges of --sheet and --header-row: the notebooks' sheet, header_row


# how the options of add_sheet_options are spelt, for the messages of the sheet reader (nblib.sheets.read_sheet)
SHEET_PARAMS = Params(columns="--column ", sheet="--sheet ", header_row="--header-row ", encoding="--encoding ")


def add_sheet_options(ap: argparse.ArgumentParser, what: str) -> None:
    """Add the options that say how to read an input sheet, the same in every command line: ``--column``,
    ``--sheet``, ``--header-row`` and ``--encoding``.

    Args:
        ap: the parser.
        what: the sheet in words, for the help texts (e.g. "the input").
    """
    ap.add_argument("--column", default="Sentence", help=f"the text column of {what}")
    ap.add_argument(
        "--sheet",
        type=sheet_choice,
        default=None,
        help=f"the sheet of {what} if an .xlsx: its name, or its 0-based position (0 = the first); none: the first",
    )
    ap.add_argument("--header-row", **from_setting(StudySettings, "header_row"))
    ap.add_argument("--encoding", default=None, help=f"the encoding of {what} if a .csv/.tsv (none: detected)")
