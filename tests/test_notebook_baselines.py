"""02_baselines by papermill parameters on the benchmark sheet: the TF-IDF + LR reference lands where expected."""
from __future__ import annotations

import pandas as pd

from conftest import cell_text


def test_baselines_notebook_on_the_benchmark_sheet(tmp_path, run_notebook, shared_labelled):
    res = tmp_path / "res"
    nb = run_notebook("02_baselines.ipynb", data_path=str(shared_labelled), unlabelled_path=None,
                      models=["lr_tfidf_char"], fig_dir=str(tmp_path / "figs"), results_dir=str(res))
    (metrics,) = res.glob("labelled_8665-*/models/lr_tfidf_char/metrics.csv")
    m = pd.read_csv(metrics)
    assert len(m) == 5
    # the reference: 5-fold TF-IDF (char 1-3-grams) + LR near accuracy 0.70 / macro-F1 0.65
    assert 0.66 < m["accuracy"].mean() < 0.74 and 0.60 < m["macro_f1"].mean() < 0.70, m[["accuracy", "macro_f1"]]
    assert (tmp_path / "figs" / "baselines_confusion_lr_tfidf_char.png").exists()
    assert "lr_tfidf_char" in cell_text(nb)
