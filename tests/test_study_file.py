"""The study file: paths relative to it, the override rule, unknown keys, `init`, and the pool that follows the data."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pandas as pd
import papermill
import pytest
from helpers import NOTEBOOKS, ROOT, cell_text

from nblib import study_file
from nblib.settings import SettingsError, StudySettings
from nblib.sheets import DataError
from nblib.study import main, open_study
from nblib.study_file import init, read_study_file, use_parameters

DEMO_STUDY = ROOT / "data" / "demo_study.yaml"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_paths_are_relative_to_the_file_and_folders_default_beside_it(tmp_path, monkeypatch):
    study = write(
        tmp_path / "my" / "study.yaml", "data_path: sheet.xlsx\nextra_labelled_paths: [a.xlsx, /abs/b.xlsx]\n"
    )
    monkeypatch.chdir(ROOT)  # wherever the notebook runs
    values = read_study_file(study)
    assert values["data_path"] == str(tmp_path / "my" / "sheet.xlsx")
    assert values["extra_labelled_paths"] == [str(tmp_path / "my" / "a.xlsx"), "/abs/b.xlsx"]
    assert values["results_dir"] == str(tmp_path / "my" / "results")
    assert values["fig_dir"] == str(tmp_path / "my" / "figures")


def test_the_demo_study_writes_where_the_repository_keeps_results_and_figures():
    values = read_study_file(DEMO_STUDY)
    assert values["data_path"] == str(ROOT / "data" / "demo_labelled.xlsx")
    assert values["unlabelled_path"] == str(ROOT / "data" / "demo_unlabelled.xlsx")
    assert (values["results_dir"], values["fig_dir"]) == (str(ROOT / "results"), str(ROOT / "figures"))


def test_a_model_id_stays_an_id_and_a_model_folder_is_resolved(tmp_path):
    (tmp_path / "models" / "e5").mkdir(parents=True)
    study = write(tmp_path / "s.yaml", "model: models/e5\nmodel_dir: models/e5\n")
    values = read_study_file(study)
    assert values["model"] == values["model_dir"] == str(tmp_path / "models" / "e5")
    assert read_study_file(write(tmp_path / "t.yaml", "model: bert-base-chinese\n"))["model"] == "bert-base-chinese"


def test_yaml_numbers_without_a_dot_are_numbers(tmp_path):
    values = read_study_file(write(tmp_path / "s.yaml", "lr: 2e-5\nepochs: '3'\ntext_col: '123'\n"))
    assert values["lr"] == 2e-5 and values["epochs"] == 3 and values["text_col"] == "123"


def test_unknown_keys_are_named_with_the_known_ones(tmp_path):
    study = write(tmp_path / "s.yaml", "data_path: x.xlsx\nlearning_rate: 0.1\nepochz: 3\n")
    with pytest.raises(SettingsError) as e:
        read_study_file(study)
    msg = str(e.value)
    assert "unknown key(s) 'learning_rate'" in msg and "'epochz' (did you mean 'epochs'?)" in msg
    assert "Known keys: " in msg and "text_col" in msg and "n_boot" in msg and "tapt_epochs" in msg


def test_a_missing_or_broken_study_file_says_so(tmp_path):
    with pytest.raises(SettingsError, match=r"Study file not found: .*nblib.study init"):
        read_study_file(tmp_path / "nope.yaml")
    with pytest.raises(SettingsError, match="not valid YAML"):
        read_study_file(write(tmp_path / "bad.yaml", "data_path: [unclosed\n"))
    with pytest.raises(SettingsError, match="key: value"):
        read_study_file(write(tmp_path / "list.yaml", "- a\n- b\n"))


def namespace(study: Path, injected: str = "", **values) -> dict:
    """A notebook's globals after its parameters cell (and papermill's injected cell, as IPython's In shows it)."""
    params: dict = {"In": ["", "from typing import Optional\n\nstudy = None\n..."]}
    exec(compile(study_file_source("03_bert_cv"), "parameters", "exec"), params)
    if injected:
        params["In"].append(f"# Parameters\n{injected}\n")
        exec(injected, params)
    params.update(values)
    params["study"] = str(study)
    return params


def study_file_source(name: str) -> str:
    from nblib.settings import parameters_source

    return parameters_source(study_file.notebook_settings()[name])


def test_parameters_given_explicitly_override_the_file(tmp_path, tiny_sheet):
    sheet = tiny_sheet(4)
    study = write(tmp_path / "s.yaml", f"data_path: {sheet.name}\nepochs: 7\nlr: 0.01\nmax_len: 64\nbatch_size: 8\n")
    write(tmp_path / sheet.name, sheet.read_text(encoding="utf-8"))
    # papermill: -p study … -p epochs 4 (the declared default, still explicit) -p lr 0.001; batch_size edited in Jupyter
    ns = namespace(study, injected=f"study = {str(study)!r}\nepochs = 4\nlr = 0.001", batch_size=16)
    taken = use_parameters(ns, "03_bert_cv")
    assert (ns["epochs"], ns["lr"], ns["batch_size"]) == (4, 0.001, 16)  # explicit: kept
    assert ns["max_len"] == 64 and ns["data_path"] == str(tmp_path / sheet.name)  # from the file
    assert ns["results_dir"] == str(tmp_path / "results") and ns["fig_dir"] == str(tmp_path / "figures")
    assert "epochs" not in taken and taken["max_len"] == 64
    ns["study"] = open_study(str(tmp_path / sheet.name), n_folds=2, results_dir=str(tmp_path / "res"))  # run again
    assert use_parameters(ns, "03_bert_cv") == {} and ns["max_len"] == 64


def test_without_a_study_file_the_parameters_are_only_checked(tmp_path, tiny_sheet):
    ns = namespace(Path(), data_path=str(tiny_sheet(4)))
    ns["study"] = None
    before = dict(ns)
    assert use_parameters(ns, "03_bert_cv") == {} and ns == before
    ns["epochs"] = 0
    with pytest.raises(SettingsError, match=r"epochs = 0 is out of range: it must be >= 1"):
        use_parameters(ns, "03_bert_cv")


def test_a_bad_number_in_the_study_file_is_named(tmp_path, tiny_sheet):
    study = write(tmp_path / "s.yaml", f"data_path: {tiny_sheet(4)}\nn_folds: 1\n")
    with pytest.raises(SettingsError, match=r"n_folds = 1 is out of range: it must be >= 2"):
        use_parameters(namespace(study), "03_bert_cv")


def test_relative_default_paths_from_the_repo_root_get_a_hint(monkeypatch):
    monkeypatch.chdir(ROOT)  # papermill notebooks/01_eda.ipynb out.ipynb, without --cwd notebooks
    ns = {"study": None, **StudySettings().__dict__}
    with pytest.raises(SettingsError) as e:
        use_parameters(ns, "01_eda")
    msg = str(e.value)
    assert "data_path = '../data/demo_labelled.xlsx': no such file from the working folder" in msg
    assert "--cwd notebooks" in msg and "-p study data/demo_study.yaml" in msg


def test_the_eda_notebook_runs_from_the_repo_root_on_a_study_file(tmp_path):
    """A study file beside the user's data, the notebook started from the repository root: paths from the file,
    results and figures beside it, a parameter given with -p over the file's."""
    demo = ROOT / "data" / "demo_labelled.xlsx"
    study = write(
        tmp_path / "mine" / "study.yaml", f"data_path: {os.path.relpath(demo, tmp_path / 'mine')}\ntop_terms: 4\n"
    )
    out = tmp_path / "out.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOKS / "01_eda.ipynb"),
        str(out),
        parameters={"study": str(study), "examples_per_class": 1},
        cwd=str(ROOT),
        progress_bar=False,
    )
    text = cell_text(nbformat.read(out, as_version=4))
    assert "Study file" in text and "given explicitly (they override it): examples_per_class" in text
    assert list((tmp_path / "mine" / "figures").glob("eda_class_counts.*"))
    assert list((tmp_path / "mine" / "results").glob("demo_labelled-*/folds_*"))


# --- the unlabelled pool follows the data ------------------------------------------------------------------


def test_a_study_of_ones_own_sheet_has_no_pool_unless_given(tiny_sheet, tmp_path):
    assert StudySettings().unlabelled_path is None
    study = open_study(tiny_sheet(4), n_folds=2, results_dir=str(tmp_path / "res"))
    assert study.pool.empty and study.unseen_pool().texts.empty
    with pytest.raises(DataError) as e:
        study.require_pool("06_unlabelled (TAPT and self-training)")
    assert "06_unlabelled (TAPT and self-training) needs unlabelled texts, but unlabelled_path is None" in str(e.value)
    assert "'unlabelled_path: my_pool.xlsx' in the study file, or -p unlabelled_path my_pool.xlsx" in str(e.value)
    with pytest.raises(DataError, match=r"Pass input_path \(-p input_path my_texts.xlsx\), or set unlabelled_path"):
        study.require_pool("05_predict (the texts to label)", alternative="input_path")


@pytest.mark.parametrize(
    "name, message",
    [
        ("05_predict.ipynb", "05_predict (the texts to label) needs unlabelled texts, but unlabelled_path is None"),
        ("06_unlabelled.ipynb", "06_unlabelled (TAPT and self-training) needs unlabelled texts"),
    ],
)
def test_notebooks_that_need_a_pool_say_what_to_pass(tmp_path, tiny_sheet, name, message):
    with pytest.raises(papermill.PapermillExecutionError) as e:
        papermill.execute_notebook(
            str(NOTEBOOKS / name),
            str(tmp_path / "out.ipynb"),
            parameters={"data_path": str(tiny_sheet(4)), "n_folds": 2, "results_dir": str(tmp_path / "res")},
            cwd=str(NOTEBOOKS),
            progress_bar=False,
        )
    assert message in str(e.value)


# --- init ---------------------------------------------------------------------------------------------------


def test_init_guesses_the_columns_counts_the_classes_and_never_overwrites(tmp_path, capsys):
    texts = [f"这是第{i}条关于节目的评论，写得比较长一些" for i in range(12)]
    sheet = tmp_path / "data" / "标注.csv"
    sheet.parent.mkdir()
    pd.DataFrame({"编号": range(12), "类别": ["好", "坏", "中"] * 4, "评论": texts}).to_csv(sheet, index=False)
    out = tmp_path / "studies" / "mine.yaml"
    assert main(["init", str(sheet), "-o", str(out)]) == 0
    said = capsys.readouterr().out
    assert "Guessed text_col: '评论' (the longest texts); label_col: '类别'" in said and "3 classes" in said
    assert f"make notebooks STUDY={out}" in said
    values = read_study_file(out)
    assert (values["data_path"], values["text_col"], values["label_col"]) == (str(sheet), "评论", "类别")
    assert values["unlabelled_path"] is None
    before = out.read_text(encoding="utf-8")
    assert main(["init", str(sheet), "-o", str(out)]) == 2
    assert "exists; it is left as it is" in capsys.readouterr().err and out.read_text(encoding="utf-8") == before


def test_init_writes_next_to_the_sheet_by_default(tmp_path, tiny_sheet):
    sheet = tiny_sheet(4)
    out = init(sheet)
    assert out == sheet.with_name(f"{sheet.stem}_study.yaml")
    assert read_study_file(out)["data_path"] == str(sheet)
    with pytest.raises(FileExistsError):
        init(sheet)


def test_the_docs_list_every_key():
    page = (ROOT / "docs" / "study-file.md").read_text(encoding="utf-8")
    missing = [k for k in study_file.known_keys() if f"| `{k}` |" not in page]
    assert not missing, f"docs/study-file.md lacks {missing}: regenerate its key tables"


def test_display_names_in_the_study_file_reach_every_figure_and_table(tmp_path, tiny_sheet):
    from nblib import names

    sheet = tiny_sheet(4)
    write(tmp_path / sheet.name, sheet.read_text(encoding="utf-8"))
    study = write(tmp_path / "s.yaml", f"data_path: {sheet.name}\ndisplay_names:\n  lr_tfidf_char: 字符 TF-IDF + LR\n")
    try:
        use_parameters(namespace(study, injected=f"study = {str(study)!r}"), "04_error_analysis")
        assert names.display("lr_tfidf_char") == "字符 TF-IDF + LR"
        assert names.display("macro_f1") == "Macro-F1"  # the built-in names stay for the rest
    finally:
        names.use(None)
    assert names.display("lr_tfidf_char") == "TF-IDF (char 1–3) + LR"
