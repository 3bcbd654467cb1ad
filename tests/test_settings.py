"""Settings declared once: notebooks' parameters cells match the settings classes, identity marked on fields."""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field

import pytest
from helpers import NOTEBOOKS

from nblib import settings
from nblib.active_learning import ActiveLearningSettings
from nblib.baselines import BaselineConfig
from nblib.bert_cv import FineTuneConfig
from nblib.self_training import PseudoLabelling
from nblib.settings import ModelSelection, StudySettings
from nblib.tapt import TaptSettings

# the settings each notebook builds from its parameters cell
NOTEBOOK_SETTINGS = {
    "01_eda": [StudySettings],
    "02_baselines": [StudySettings, BaselineConfig],
    "03_bert_cv": [FineTuneConfig],
    "04_error_analysis": [StudySettings],
    "05_predict": [StudySettings, ActiveLearningSettings],
    "06_unlabelled": [StudySettings, TaptSettings, PseudoLabelling],
}


def notebook(name: str) -> dict:
    return json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())


def parameters_cell(name: str) -> str:
    (cell,) = [c for c in notebook(name)["cells"] if "parameters" in c["metadata"].get("tags", [])]
    return "".join(cell["source"])


def test_every_notebook_is_covered():
    assert sorted(p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")) == sorted(NOTEBOOK_SETTINGS)


@pytest.mark.parametrize("name", sorted(NOTEBOOK_SETTINGS))
def test_parameters_are_the_settings_with_their_defaults(name):
    params: dict = {}
    exec(parameters_cell(name), params)
    for cls in NOTEBOOK_SETTINGS[name]:
        for setting, default in settings.defaults(cls).items():
            assert setting in params, f"{name}: {cls.__name__}.{setting} cannot be set from the notebook"
            assert params[setting] == default, (
                f"{name}: {setting} = {params[setting]!r}, {cls.__name__} says {default!r}"
            )


@pytest.mark.parametrize("name", sorted(NOTEBOOK_SETTINGS))
def test_notebook_is_committed_clean_and_typed(name):
    nb = notebook(name)
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code), f"{name} has outputs: clear them"
    assert sum("parameters" in c["metadata"].get("tags", []) for c in code) == 1
    # every parameter carries a type hint, so that papermill --help-notebook shows its type
    assert all(isinstance(stmt, ast.AnnAssign) for stmt in ast.parse(parameters_cell(name)).body)


@dataclass
class Inner:
    a: int = 1
    gpu: str = settings.runtime("auto")


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    b: float = 0.5
    saved: bool = settings.runtime(True)


def test_from_params_fills_nested_settings_from_flat_names():
    built = settings.from_params(Outer, {"a": 7, "b": 0.1, "gpu": "cuda", "unrelated": object()})
    assert built == Outer(Inner(7, "cuda"), 0.1)
    assert settings.to_params(built) == {"a": 7, "gpu": "cuda", "b": 0.1, "saved": True}
    assert settings.from_params(Outer, settings.to_params(built)) == built
    assert settings.defaults(Outer) == {"a": 1, "gpu": "auto", "b": 0.5, "saved": True}


def test_identity_leaves_out_runtime_fields():
    assert settings.identity(Outer(Inner(7, "cuda"), 0.1, False)) == {"a": 7, "b": 0.1}
    assert settings.identity(BaselineConfig())["select_on"] == ModelSelection().select_on


def test_a_setting_name_declared_twice_is_refused():
    @dataclass
    class Clash:
        inner: Inner = field(default_factory=Inner)
        a: int = 2

    with pytest.raises(TypeError, match=r"\['a'\] declared twice"):
        settings.flat_fields(Clash)
