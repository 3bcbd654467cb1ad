"""Settings declared once: notebooks' parameters cells match the settings classes, identity marked on fields."""

from __future__ import annotations

import ast
import json
import typing
from dataclasses import dataclass, field

import numpy as np
import pytest
from helpers import NOTEBOOKS

from nblib import settings
from nblib.baselines import BaselineConfig
from nblib.bert_cv import FineTuneConfig
from nblib.settings import ModelSelection, SettingsError, StudySettings
from nblib.study_file import notebook_settings

# the settings each notebook builds from its parameters cell
NOTEBOOK_SETTINGS = notebook_settings()


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
    # every parameter carries a type hint, so that papermill --help-notebook shows its type (Optional/Union from typing)
    body = ast.parse(parameters_cell(name)).body
    assert all(isinstance(stmt, ast.AnnAssign) for stmt in body[1:])
    assert isinstance(body[0], ast.ImportFrom) and body[0].module == "typing"


@pytest.mark.parametrize("name", sorted(NOTEBOOK_SETTINGS))
def test_parameters_cell_is_written_from_the_settings(name):
    """Type, default and help of each parameter come from its field (one source): the cell is what they make."""
    assert parameters_cell(name) == settings.parameters_source(NOTEBOOK_SETTINGS[name])


def all_fields():
    classes = {c for cs in NOTEBOOK_SETTINGS.values() for c in cs}
    return {
        (c.__name__, n): (f, settings.flat_types(c)[n]) for c in classes for n, f in settings.flat_fields(c).items()
    }


def test_every_parameter_has_help_and_every_number_a_range():
    for (cls, name), (f, hint) in all_fields().items():
        assert settings.help_of(f), f"{cls}.{name} has no help text"
        numeric = {int, float} & set(typing.get_args(hint) or (hint,))
        assert bool(numeric) == (settings.range_of(f) is not None), f"{cls}.{name}: a number needs a range"


@pytest.mark.parametrize(
    "cls, name, value, expected",
    [
        (FineTuneConfig, "epochs", 0, "epochs = 0 is out of range: it must be >= 1"),
        (FineTuneConfig, "batch_size", 0, "batch_size = 0 is out of range: it must be >= 1"),
        (FineTuneConfig, "max_len", 0, "max_len = 0 is out of range: it must be >= 1"),
        (FineTuneConfig, "lr", -1e-5, "lr = -1e-05 is out of range: it must be > 0"),
        (FineTuneConfig, "val_fraction", 1.0, "val_fraction = 1.0 is out of range: it must be > 0 and < 1"),
        (FineTuneConfig, "num_processes", 0, "num_processes = 0 is out of range: it must be >= 1"),
        (FineTuneConfig, "epochs", "five", "epochs = 'five': it must be an integer, >= 1"),
        (FineTuneConfig, "epochs", 2.5, "epochs = 2.5: it must be an integer, >= 1"),
        (StudySettings, "n_folds", 1, "n_folds = 1 is out of range: it must be >= 2"),
        (StudySettings, "seed", -1, "seed = -1 is out of range: it must be >= 0"),
        (BaselineConfig, "epochs", 0, "epochs = 0 is out of range: it must be >= 1"),
        (BaselineConfig, "dropout", 1.0, "dropout = 1.0 is out of range: it must be >= 0 and < 1"),
        (settings.AnalysisSettings, "n_boot", -5, "n_boot = -5 is out of range: it must be >= 10"),
        (settings.PredictSettings, "n_boot", -5, "n_boot = -5 is out of range: it must be >= 10"),
        (settings.UnlabelledSettings, "n_boot", -5, "n_boot = -5 is out of range: it must be >= 10"),
        (settings.PredictSettings, "max_len", 0, "max_len = 0 is out of range: it must be >= 1"),
    ],
)
def test_numbers_out_of_range_are_refused_naming_the_parameter_and_range(cls, name, value, expected):
    with pytest.raises(SettingsError) as e:
        settings.from_params(cls, {name: value})
    assert str(e.value).startswith(expected), str(e.value)
    assert settings.help_of(settings.flat_fields(cls)[name]) in str(e.value)  # and what the parameter is


def test_auto_and_none_pass_the_numeric_checks():
    cfg = settings.from_params(FineTuneConfig, {"num_processes": "auto", "head_lr": None, "epochs": 1, "lr": 1})
    assert (cfg.num_processes, cfg.train.head_lr, cfg.train.lr) == ("auto", None, 1)
    assert settings.from_params(StudySettings, {"n_folds": np.int64(3)}).n_folds == 3  # numpy numbers are numbers


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
