"""Settings declared once, as dataclass fields: each field is a notebook parameter of the same name and default.

A notebook builds its settings from its ``parameters`` cell with :func:`from_params`; nested settings
(``FineTuneConfig.train``) are filled from the same flat parameter names. Each field carries, declared with
:func:`setting` (or :func:`runtime`), its help text and, for numbers, the range it must lie in: the
parameters cells (:func:`parameters_source`), ``papermill --help-notebook`` and the checks of
:func:`from_params` all read them from there. Whether a field is part of a run's *identity* (the settings a
resumed run must share with the results it finds) is marked on the field too: every field is, except those
declared with :func:`runtime` (hardware, what gets saved).
"""

from __future__ import annotations

import json
import math
import numbers
import types
import typing
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass
from typing import Any, Literal, TypeVar, Union

from .sheets import DataError

T = TypeVar("T")
SelectOn = Literal["val_macro_f1", "val_loss"]
Ensemble = Literal["final", "folds"]
Device = Literal["auto", "cpu", "cuda"]
Truncation = Literal["head", "head+tail"]
# parameters renamed in a notebook: {notebook: {old name: (new name, what the old name means now)}}
RENAMED = {"02_baselines": {"max_len": ("lstm_max_units", "BERT's tokens per text, a parameter of 03 and 05")}}
MAX_LEN = 128  # BERT's tokens per text, [CLS] and [SEP] included: the default of every max_len (03, 05, TAPT)
PathKind = Literal["input", "output", "model"]
_IDENTITY, _HELP, _RANGE, _PATH = "identity", "help", "range", "path"


class SettingsError(DataError):
    """A parameter has a value it cannot take; the message names it and the values it can take."""


@dataclass(frozen=True)
class Range:
    """The values a numeric setting may take: bounds inclusive (``ge``, ``le``) or exclusive (``gt``, ``lt``)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def __contains__(self, value: float) -> bool:
        return not (
            (self.ge is not None and value < self.ge)
            or (self.gt is not None and value <= self.gt)
            or (self.le is not None and value > self.le)
            or (self.lt is not None and value >= self.lt)
        )

    def __str__(self) -> str:
        low = f">= {self.ge:g}" if self.ge is not None else f"> {self.gt:g}" if self.gt is not None else ""
        high = f"<= {self.le:g}" if self.le is not None else f"< {self.lt:g}" if self.lt is not None else ""
        return " and ".join(b for b in (low, high) if b) or "any number"


def setting(
    default: Any = MISSING,
    help: str = "",
    *,
    default_factory: Any = MISSING,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    path: PathKind | None = None,
    identity: bool = True,
) -> Any:
    """A settings field with its help text and, for a number, its allowed range (checked by :func:`from_params`).

    Args:
        default: the default value.
        help: one line for the parameters cell and ``papermill --help-notebook``.
        default_factory: or a factory for the default (nested settings: the settings class).
        ge: the least allowed value (inclusive); ``gt``: exclusive.
        gt: exclusive lower bound.
        le: the greatest allowed value (inclusive); ``lt``: exclusive.
        lt: exclusive upper bound.
        path: a file or folder: "input" (must exist), "output" (written), "model" (a folder, or a hub id);
            a study file's relative paths are read relative to the file.
        identity: False for how a run executes (hardware, what is saved), not what it computes (see :func:`runtime`).
    """
    bounds = Range(ge, gt, le, lt)
    metadata = {_IDENTITY: identity, _HELP: help, _PATH: path, _RANGE: bounds if bounds != Range() else None}
    return field(default=default, default_factory=default_factory, metadata=metadata)


def runtime(default: Any = MISSING, help: str = "", *, default_factory: Any = MISSING, **check: Any) -> Any:
    """A field for how a run executes (hardware, what is saved), not what it computes: not part of its identity.

    Args:
        default: the default value.
        help: its help text (see :func:`setting`).
        default_factory: or a factory for it.
        **check: ``ge``, ``gt``, ``le``, ``lt``, ``path`` as for :func:`setting`.
    """
    return setting(default, help, default_factory=default_factory, identity=False, **check)


def help_of(f: Field) -> str:
    """The help text of a settings field ("" where none was declared).

    Args:
        f: the field.
    """
    return f.metadata.get(_HELP, "")


def range_of(f: Field) -> Range | None:
    """The allowed range of a numeric settings field (None: not a number, or any value).

    Args:
        f: the field.
    """
    return f.metadata.get(_RANGE)


def path_kind(f: Field) -> PathKind | None:
    """Whether a settings field holds a path, and which kind (see :func:`setting`); None: not a path.

    Args:
        f: the field.
    """
    return f.metadata.get(_PATH)


def _nested(f: Field) -> type | None:
    """The settings class of a nested-settings field (declared with ``default_factory=SomeSettings``)."""
    factory = f.default_factory
    return factory if factory is not MISSING and is_dataclass(factory) else None


def _leaves(cls: type) -> Iterator[tuple[type, Field]]:
    """Every leaf field of a settings class with the class that declares it, nested settings expanded, in order."""
    for f in fields(cls):
        inner = _nested(f)
        yield from _leaves(inner) if inner else [(cls, f)]


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


def flat_types(cls: type) -> dict[str, Any]:
    """The type of every leaf setting of ``cls`` by flat name (annotations resolved).

    Args:
        cls: a settings dataclass.
    """
    return {f.name: typing.get_type_hints(owner)[f.name] for owner, f in _leaves(cls)}


def defaults(cls: type) -> dict[str, Any]:
    """The default of every leaf setting of ``cls`` by flat name (what a notebook's parameters cell must show).

    Args:
        cls: a settings dataclass.
    """
    return {
        name: f.default if f.default is not MISSING else f.default_factory() for name, f in flat_fields(cls).items()
    }


def union_args(hint: Any) -> tuple[Any, ...]:
    """The members of a union type (``X | Y``, ``Optional[X]``), or the type alone.

    Args:
        hint: a type.
    """
    if typing.get_origin(hint) in (Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _admits(hint: Any, value: Any) -> bool:
    """Whether ``value`` is of type ``hint`` (unions, Literal, None, the plain and generic builtins)."""
    for member in union_args(hint):
        origin = typing.get_origin(member) or member
        if origin is Literal:
            if value in typing.get_args(member):
                return True
        elif member is type(None):
            if value is None:
                return True
        elif origin is float:
            if isinstance(value, numbers.Real) and not isinstance(value, bool):
                return True
        elif origin is int:
            if isinstance(value, numbers.Integral) and not isinstance(value, bool):
                return True
        elif isinstance(origin, type) and isinstance(value, origin):
            return True
    return False


def _kind(hint: Any) -> str:
    """How a type reads in a message: "an integer", "a number", "text or None"…"""
    names = {int: "an integer", float: "a number", str: "text", bool: "True or False", type(None): "None"}
    parts = []
    for member in union_args(hint):
        if typing.get_origin(member) is Literal:
            parts += [repr(v) for v in typing.get_args(member)]
        else:
            origin = typing.get_origin(member) or member
            parts.append(names.get(origin, f"a {getattr(origin, '__name__', origin)}"))
    return " or ".join(parts)


def check(name: str, value: Any, hint: Any, f: Field) -> None:
    """Check one numeric setting's value against its type and range (other settings are checked where used).

    Args:
        name: the parameter's name, for the message.
        value: its value.
        hint: its type.
        f: its field (the range and help text).

    Raises:
        SettingsError: naming the parameter, its value and what it may be.
    """
    bounds = range_of(f)
    if bounds is None:
        return
    what = f" ({help_of(f)})" if help_of(f) else ""
    numeric = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not _admits(hint, value):
        raise SettingsError(f"{name} = {value!r}: it must be {_kind(hint)}, {bounds}{what}.")
    if numeric and (value not in bounds or math.isnan(value)):
        raise SettingsError(f"{name} = {value!r} is out of range: it must be {bounds}{what}.")


def from_params(cls: type[T], params: Mapping[str, Any]) -> T:
    """Build settings from flat parameters (a notebook's ``globals()``, or a dict from :func:`to_params`), each
    number checked against the range declared on its field.

    Args:
        cls: the settings dataclass to build.
        params: values by flat setting name; a setting missing here keeps its default.

    Returns:
        An instance of ``cls`` with nested settings built from the same names.

    Raises:
        SettingsError: a number out of its range, or not a number; the message names the parameter and the range.
    """
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in fields(cls):
        inner = _nested(f)
        if inner:
            kwargs[f.name] = from_params(inner, params)
        elif f.name in params:
            check(f.name, params[f.name], hints[f.name], f)
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


# --- the parameters cell --------------------------------------------------------------------------------

STUDY_PARAMETER = "study"
STUDY_HELP = "a study file (YAML) of these parameters; those given explicitly override it"


def annotation(hint: Any) -> str:
    """A type as papermill's ``--help-notebook`` reads it: ``Optional[X]`` and ``Union[X, Y]`` (it drops
    ``X | Y``), a Literal as the type of its values.

    Args:
        hint: the type.
    """
    names: list[str] = []
    for member in union_args(hint):
        if typing.get_origin(member) is Literal:
            name = type(typing.get_args(member)[0]).__name__
        elif member is type(None):
            name = "None"
        elif typing.get_origin(member):
            args = ", ".join(annotation(a) for a in typing.get_args(member))
            name = f"{typing.get_origin(member).__name__}[{args}]"
        else:
            name = member.__name__
        if name not in names:
            names.append(name)
    if len(names) == 1:
        return names[0]
    if names[-1] == "None" and len(names) == 2:
        return f"Optional[{names[0]}]"
    return f"Union[{', '.join(names)}]"


def _literal(value: Any) -> str:
    """Python source of a default, as ruff formats it (double quotes)."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(map(_literal, value)) + "]"
    return repr(value)


def parameters_source(classes: Sequence[type], line_length: int = 120) -> str:
    """The source of a notebook's ``parameters`` cell: the ``study`` file, then every leaf setting of ``classes``
    with its type (as papermill reads it), default and help, under a comment naming the class that declares it.

    Args:
        classes: the settings classes the notebook builds.
        line_length: the longest line (ruff's); a longer one would be wrapped and lose its help text.

    Raises:
        ValueError: a line too long, or a setting without help text.
    """
    lines = [f"{STUDY_PARAMETER}: Optional[str] = None  # {STUDY_HELP}"]
    owner_seen = None
    for cls in classes:
        for owner, f in _leaves(cls):
            if owner is not owner_seen:
                doc = (owner.__doc__ or "").strip().splitlines()[0].split("; ")[0].rstrip(".")
                lines.append(f"# {doc} ({owner.__module__}.{owner.__qualname__})")
                owner_seen = owner
            hint = typing.get_type_hints(owner)[f.name]
            default = f.default if f.default is not MISSING else f.default_factory()
            if not help_of(f):
                raise ValueError(f"{owner.__name__}.{f.name} has no help text: declare it with setting(…, help).")
            line = f"{f.name}: {annotation(hint)} = {_literal(default)}  # {help_of(f)}"
            if len(line) > line_length and isinstance(default, list):
                items = "".join(f"    {_literal(v)},\n" for v in default)
                line = f"{f.name}: {annotation(hint)} = [\n{items}]  # {help_of(f)}"
            elif len(line) > line_length:
                raise ValueError(
                    f"{owner.__name__}.{f.name}: line over {line_length} characters, shorten its help:\n{line}"
                )
            lines.append(line)
    source = "\n".join(lines)
    used = [name for name in ("Optional", "Union") if f"{name}[" in source]
    return (f"from typing import {', '.join(used)}\n\n" if used else "") + source


# --- the settings every notebook shares, and the notebooks' own -----------------------------------------


@dataclass
class ModelSelection:
    """How every model of the study (baselines and BERT alike) picks its epoch inside a fold."""

    val_fraction: float = setting(0.1, "share of the training folds set aside for validation", gt=0, lt=1)
    select_on: SelectOn = setting("val_macro_f1", "keep the epoch with the best val_macro_f1, or the lowest val_loss")


@dataclass
class StudySettings:
    """The study: the data, its folds and results, the same in every notebook."""

    data_path: str = setting("../data/demo_labelled.xlsx", "the labelled sheet: .xlsx, .csv or .tsv", path="input")
    text_col: str = setting("Sentence", "the labelled sheet's column of texts")
    label_col: str = setting("Label", "the labelled sheet's column of labels")
    sheet: str | int | None = setting(None, "sheet name or index in an .xlsx (None: the first)", ge=0)
    header_row: int = setting(1, "the sheet row that holds the column names", ge=1)
    encoding: str | None = setting(None, "of a .csv/.tsv (None: detected)")
    label_table: str | dict | None = setting(None, "{label: name}, or a file with Label/Name/Description", path="input")
    unlabelled_path: str | None = setting(None, "a sheet of unlabelled texts (word2vec, 05, 06), or None", path="input")
    unlabelled_text_col: str = setting("Sentence", "the unlabelled sheet's column of texts")
    extra_labelled_paths: str | list[str] | None = setting(
        None, "filled annotator sheets (05) added as labelled rows", path="input"
    )
    n_folds: int = setting(5, "cross-validation folds", ge=2)
    seed: int = setting(42, "seed of the folds, validation splits and training", ge=0)
    results_dir: str = setting("../results", "folder of the study's results (one subfolder per sheet)", path="output")


@dataclass
class FigureSettings:
    """Where the notebook saves its figures, and the names they show."""

    fig_dir: str = runtime("../figures", "folder for the figures (png and pdf)", path="output")
    display_names: dict | None = runtime(None, "names in figures and paper tables, by id: {lr_tfidf_char: TF-IDF + LR}")


@dataclass
class EdaSettings:
    """01_eda's own parameters."""

    top_terms: int = setting(10, "characteristic terms shown per class", ge=1)
    examples_per_class: int = setting(3, "example texts shown per class", ge=0)


@dataclass
class AnalysisSettings:
    """04_error_analysis's own parameters."""

    reference: str | None = setting(None, "the model to examine, a results folder name (None: the best BERT run)")
    side_by_side: int = setting(3, "models in the side-by-side confusion matrices (reference + best others)", ge=1)
    n_boot: int = setting(1000, "bootstrap resamples for the confidence intervals", ge=10)
    top: int = setting(10, "rows in the example tables", ge=1)
    issues_ranked_by: str = setting("self_confidence", "label issues: cleanlab's ranking (or normalized_margin, …)")


@dataclass
class PredictSettings:
    """05_predict's own parameters: the model, the texts to label, the class shares."""

    bert_run: str | None = setting(None, "results folder name of the BERT run (None: the newest with a final model)")
    model_dir: str | None = setting(
        None, "or a model folder (final, fold_models/fold_k); overrides bert_run", path="model"
    )
    ensemble: Ensemble = setting("final", "final: the final model; folds: the mean of the fold models")
    llm_run: str | None = setting(None, "or a finished LLM run of 07 (llm_…): it labels instead of BERT (docs/llm.md)")
    input_path: str | None = setting(None, "the texts to label (None: the study's unlabelled_path)", path="input")
    input_col: str | None = setting(None, "their column (None: unlabelled_text_col)")
    input_sheet: str | int | None = setting(None, "sheet name or index of an .xlsx input (None: the first)", ge=0)
    input_header_row: int = setting(1, "the input's row that holds the column names", ge=1)
    input_encoding: str | None = setting(None, "of a .csv/.tsv input (None: detected)")
    truncation: Truncation | None = setting(
        None, "texts longer than max_len: keep head, or head+tail (None: as the model was trained)"
    )
    output_path: str | None = setting(
        None, "None: <study>/predictions/<input>_<run>.xlsx, never overwritten", path="output"
    )
    batch_size: int = setting(64, "texts per forward pass", ge=1)
    max_len: int | None = setting(None, "tokens per text; longer ones are cut (None: as the model was trained)", ge=1)
    device: Device = setting("auto", "auto, cpu or cuda (cuda without a GPU is an error)")
    group_col: str | None = setting(None, "an input column that groups the texts (e.g. the TV show): shares per group")
    shares_methods: str = setting(
        "CC,ACC,PCC,PACC,EMQ,PPI", "class-share estimators, comma-separated (nblib.shares.METHODS)"
    )
    n_boot: int = setting(1000, "bootstrap replicates for the intervals of the class shares", ge=10)
    shift_repeats: int = setting(10, "shifted held-out samples of the check that picks the headline method", ge=1)
    coverage_boot: int = setting(200, "bootstrap replicates per shifted sample in the coverage check", ge=10)


@dataclass
class UnlabelledSettings:
    """06_unlabelled's own parameters: the plain run compared with, the arms, reporting and hardware."""

    plain_run: str = setting("bert_bert-base-chinese", "the 03_bert_cv run compared with (bert_ + model folder name)")
    arms: str | list[str] = setting("tapt,self,both", "which of tapt, self, both to run")
    folds: str | list[int] | None = setting(None, 'compare on these folds only, e.g. "0,1" (quicker); None: every fold')
    n_examples: int = setting(6, "masked example sentences shown before and after TAPT", ge=0)
    n_boot: int = setting(1000, "bootstrap resamples of the paired intervals", ge=10)
    device: Literal["auto", "cpu", "cuda"] = runtime("auto", "auto, cpu or cuda")
    num_processes: int | Literal["auto"] = runtime("auto", "auto: every visible GPU (1 on CPU)", ge=1)
    parallel: Literal["auto", "folds", "ddp"] = runtime("auto", "fine-tuning: auto, folds or ddp (as in 03)")


@dataclass
class LlmSettings:
    """07_llm's own parameters: the LLM, its prompt, the runs and the human-agreement check."""

    llm_backend: Literal["local", "api"] = setting(
        "local", "local: a Hugging Face causal LM; api: an OpenAI-compatible server"
    )
    llm_model: str = setting(
        "tiny-random", "local: a causal LM folder or hub id (tiny-random: a test model); api: its name"
    )
    codebook_path: str | None = setting(
        None, "file with Label, Name, Description, Include, Exclude, Examples; None: label table", path="input"
    )
    template: str | None = setting(None, "instruction with {codebook}, {labels} (None: nblib.llm.DEFAULT_TEMPLATE)")
    language: Literal["zh", "en"] = setting("zh", "language of the default template and the words around texts")
    verbalize: Literal["label", "name"] = setting(
        "label", "each class's answer: its label as in the sheet, or its name"
    )
    k_shot: int = setting(2, "examples per class in k-shot prompts (from each fold's training texts)", ge=1)
    paraphrases: list[str] | None = setting(
        None, "paraphrased templates for prompt stability (None: nblib.llm.PARAPHRASES)"
    )
    stability_texts: int = setting(200, "labelled texts (a random sample) scored with every paraphrase", ge=1)
    second_coder_path: str | None = setting(
        None, "a second coder's sheet of the labelled texts (human agreement); None: none", path="input"
    )
    second_coder_text_col: str | None = setting(None, "its column of texts (None: text_col)")
    second_coder_label_col: str | None = setting(None, "its column of labels (None: label_col)")
    n_boot: int = setting(1000, "bootstrap resamples of the paired tests and agreement intervals", ge=10)
    api_base_url: str | None = setting(None, "api: the server's base URL, e.g. https://api.deepseek.com/v1")
    api_key_env: str = runtime("OPENAI_API_KEY", "api: the environment variable holding the key (never written)")
    llm_batch_size: int = runtime(16, "local: texts per forward pass", ge=1)
    device: Literal["auto", "cpu", "cuda"] = runtime(
        "auto", "local: auto or cuda: every visible GPU (texts sharded), or cpu"
    )
