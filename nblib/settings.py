"""Settings declared once, as dataclass fields: each field is a notebook parameter of the same name and default.

A notebook builds its settings from its ``parameters`` cell with :func:`from_params`; nested settings
(``FineTuneConfig.train``) are filled from the same flat parameter names. Whether a field is part of a
run's *identity* (the settings a resumed run must share with the results it finds) is marked on the
field: every field is, except those declared with :func:`runtime` (hardware, what gets saved).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass
from typing import Any, Literal, TypeVar

T = TypeVar("T")
SelectOn = Literal["val_macro_f1", "val_loss"]
_IDENTITY = "identity"


def runtime(default: Any = MISSING, *, default_factory: Any = MISSING) -> Any:
    """A field for how a run executes (hardware, what is saved), not what it computes: not part of its identity.

    Args:
        default: the default value.
        default_factory: or a factory for it.
    """
    return field(default=default, default_factory=default_factory, metadata={_IDENTITY: False})


def _nested(f: Field) -> type | None:
    """The settings class of a nested-settings field (declared with ``default_factory=SomeSettings``)."""
    factory = f.default_factory
    return factory if factory is not MISSING and is_dataclass(factory) else None


def flat_fields(cls: type) -> dict[str, Field]:
    """Every leaf field of a settings class by name, nested settings expanded (names are unique across them).

    Args:
        cls: a settings dataclass.
    """
    out: dict[str, Field] = {}
    for f in fields(cls):
        inner = _nested(f)
        found = flat_fields(inner) if inner else {f.name: f}
        clash = set(out) & set(found)
        if clash:
            raise TypeError(f"{cls.__name__}: setting name(s) {sorted(clash)} declared twice")
        out.update(found)
    return out


def defaults(cls: type) -> dict[str, Any]:
    """The default of every leaf setting of ``cls`` by flat name (what a notebook's parameters cell must show).

    Args:
        cls: a settings dataclass.
    """
    return {
        name: f.default if f.default is not MISSING else f.default_factory() for name, f in flat_fields(cls).items()
    }


def from_params(cls: type[T], params: Mapping[str, Any]) -> T:
    """Build settings from flat parameters (a notebook's ``globals()``, or a dict from :func:`to_params`).

    Args:
        cls: the settings dataclass to build.
        params: values by flat setting name; a setting missing here keeps its default.

    Returns:
        An instance of ``cls`` with nested settings built from the same names.
    """
    kwargs = {}
    for f in fields(cls):
        inner = _nested(f)
        if inner:
            kwargs[f.name] = from_params(inner, params)
        elif f.name in params:
            kwargs[f.name] = params[f.name]
    return cls(**kwargs)


def _flatten(settings: Any, identity_only: bool) -> dict[str, Any]:
    """The leaf settings by flat name, nested settings expanded; optionally only those of the run's identity."""
    out = {}
    for f in fields(settings):
        if identity_only and not f.metadata.get(_IDENTITY, True):
            continue
        value = getattr(settings, f.name)
        out.update(_flatten(value, identity_only) if _nested(f) else {f.name: value})
    return out


def to_params(settings: Any) -> dict[str, Any]:
    """The flat ``{name: value}`` of every leaf setting (the inverse of :func:`from_params`).

    Args:
        settings: a settings dataclass instance.
    """
    return _flatten(settings, identity_only=False)


def identity(settings: Any) -> dict[str, Any]:
    """The flat settings that decide a run's results: every leaf field not declared with :func:`runtime`.

    Args:
        settings: a settings dataclass instance.
    """
    return _flatten(settings, identity_only=True)


def choices(value: str | int | Iterable[Any], allowed: Sequence[Any], what: str) -> list[Any]:
    """Names (or numbers) picked from ``allowed``: a list, or the string papermill passes for ``-p name ...``: one
    value, values separated by commas or spaces, or a JSON list; an error naming the unknown ones.

    Args:
        value: the choice.
        allowed: the valid values (their type converts the strings: ``int`` for fold numbers).
        what: what they are, for the message (e.g. "baseline").
    """
    if isinstance(value, (int, float)):  # papermill passes -p folds 0 as a number
        value = [value]
    if isinstance(value, str):
        text = value.strip()
        value = json.loads(text) if text.startswith("[") else text.replace(",", " ").split()
    kind = type(allowed[0]) if allowed else str
    try:
        picked = [kind(v) for v in value]
    except ValueError:
        picked = list(value)
    unknown = [v for v in picked if v not in allowed]
    if unknown or not picked:
        raise ValueError(f"Unknown {what}(s) {unknown or picked!r}; choose from {list(allowed)}.")
    return picked


@dataclass
class ModelSelection:
    """How every model of the study (baselines and BERT alike) picks its epoch inside a fold."""

    val_fraction: float = 0.1  # share of the training folds set aside for validation
    select_on: SelectOn = "val_macro_f1"  # keep the epoch with the best validation macro-F1 (or lowest loss)


@dataclass
class StudySettings:
    """The data and folds a study is about: the same parameters in every notebook."""

    data_path: str = "../data/demo_labelled.xlsx"  # .xlsx, .csv or .tsv
    text_col: str = "Sentence"
    label_col: str = "Label"
    sheet: str | int | None = None  # sheet name or index in an .xlsx (None: the first)
    header_row: int = 1  # the sheet row that holds the column names
    encoding: str | None = None  # of a .csv/.tsv (None: detected)
    label_table: str | dict | None = None  # {label: name}, or a file with Label/Name/Description
    unlabelled_path: str | None = "../data/demo_unlabelled.xlsx"  # the unlabelled pool, or None
    unlabelled_text_col: str = "Sentence"
    extra_labelled_paths: str | list[str] | None = None  # filled annotator sheets (05) added as labelled rows
    n_folds: int = 5
    seed: int = 42  # folds, validation splits and training
    results_dir: str = "../results"
