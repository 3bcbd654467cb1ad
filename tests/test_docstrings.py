"""Every module of nblib opens with one sentence that says its job; every public function and method has a docstring
naming each parameter, and full type hints."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from collections.abc import Callable, Iterator
from functools import cached_property
from types import ModuleType

import papermill.engines  # noqa: F401  papermill loads nblib's engine by entry point: importing it first is circular
import pytest

import nblib

MODULES = ["nblib", *sorted(f"nblib.{m.name}" for m in pkgutil.iter_modules(nblib.__path__))]


def _is_generated(func: Callable) -> bool:
    """Whether a function was generated at runtime (dataclass ``__init__``, ``__repr__``, ...), not written out."""
    code = getattr(func, "__code__", None)
    return code is not None and code.co_filename.startswith("<")


def _methods(cls: type) -> Iterator[tuple[str, Callable, str]]:
    """The public methods defined in ``cls`` itself, and ``__init__`` when it takes parameters beyond self.

    Yields ``(name, function, extra_doc)``: ``extra_doc`` is the class docstring for ``__init__`` (its
    parameters may be documented there), else empty.
    """
    for name, attr in vars(cls).items():
        if isinstance(attr, (property, cached_property)):
            continue
        if name != "__init__" and name.startswith("_"):
            continue
        func = attr.__func__ if isinstance(attr, (staticmethod, classmethod)) else attr
        if not inspect.isfunction(func) or _is_generated(func):
            continue
        if name == "__init__":
            params = [p for p in inspect.signature(func).parameters if p not in ("self", "cls")]
            if not params:
                continue
            yield name, func, inspect.getdoc(cls) or ""
        else:
            yield name, func, ""


def _callables(module: ModuleType) -> Iterator[tuple[str, Callable, str]]:
    """Public functions defined in ``module`` and the public methods of its public classes."""
    for name, obj in inspect.getmembers(module):
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(obj):
            yield name, obj, ""
        elif inspect.isclass(obj):
            for meth, func, extra in _methods(obj):
                yield f"{name}.{meth}", func, extra


def _problems(qualname: str, func: Callable, extra_doc: str) -> list[str]:
    """What ``func`` lacks: a docstring, a mention of each parameter, annotations."""
    doc = "\n".join(filter(None, [extra_doc, inspect.getdoc(func) or ""]))
    is_init = qualname.endswith(".__init__")
    sig = inspect.signature(func)
    missing = []
    if not (inspect.getdoc(func) or (is_init and extra_doc)):
        missing.append("no docstring")
    for p in sig.parameters.values():
        if p.name in ("self", "cls"):
            continue
        if doc and not re.search(rf"(?<!\w){re.escape(p.name)}(?!\w)", doc):
            missing.append(f"parameter '{p.name}' not in docstring")
        if p.annotation is inspect.Parameter.empty:
            missing.append(f"parameter '{p.name}' not annotated")
    if not is_init and sig.return_annotation is inspect.Signature.empty:
        missing.append("return not annotated")
    return missing


def test_public_callables_have_docstrings_and_type_hints():
    offenders = []
    checked = 0
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for qualname, func, extra_doc in _callables(module):
            checked += 1
            problems = _problems(qualname, func, extra_doc)
            if problems:
                offenders.append(f"{module_name}.{qualname}: {'; '.join(problems)}")
    assert checked, "no public functions found"
    assert not offenders, f"{len(offenders)} public function(s) lack docs or type hints:\n" + "\n".join(offenders)


def _summary_problem(doc: str | None) -> str | None:
    """What is wrong with a module docstring's opening paragraph (its summary), or None: it must be one sentence."""
    if not doc or not doc.strip():
        return "no module docstring"
    summary = " ".join(doc.strip().split("\n\n")[0].split())
    if not summary[0].isalpha():
        return f"the summary does not begin with a word: {summary[:40]!r}"
    if not summary.endswith("."):
        return f"the summary is not a sentence ending in a full stop: {summary!r}"
    if len(summary) > 240:
        return f"the summary is {len(summary)} characters (at most 240: one sentence, one job)"
    inner = re.sub(r"\b(e\.g|i\.e|etc|vs)\.", "", summary[:-1])
    if re.search(r"[.!?] [A-Z]", inner):
        return f"the summary holds more than one sentence: {summary!r}"
    return None


def test_every_module_opens_with_one_sentence_saying_its_job():
    assert "nblib.papermill_engine" in MODULES and "nblib.tapt" in MODULES and "nblib.self_training" in MODULES
    offenders = [
        f"{name}: {problem}" for name in MODULES if (problem := _summary_problem(importlib.import_module(name).__doc__))
    ]
    assert not offenders, "module docstrings that do not open with one sentence:\n" + "\n".join(offenders)


@pytest.mark.parametrize(
    "doc, problem",
    [
        (None, "no module docstring"),
        ("Loads data\n\nMore.", "full stop"),
        ("Loads data. Also trains models.\n\nMore.", "more than one sentence"),
        ("``nblib.x`` loads data.\n", "begin with a word"),
    ],
)
def test_the_module_summary_check_names_what_is_wrong(doc, problem):
    assert problem in _summary_problem(doc)
    assert _summary_problem("Loads data (e.g. a sheet), checked.\n\nMore. And more.") is None
