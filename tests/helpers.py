"""Paths and small helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
DEMO_LABELLED = ROOT / "data" / "demo_labelled.xlsx"
DEMO_UNLABELLED = ROOT / "data" / "demo_unlabelled.xlsx"
SHARED = ROOT.parent / "shared" / "datasets" / "weibo_emotion"

# three classes, each marked by its own words: the texts of the tiny sheet
TINY_WORDS = {0: ["舞美", "灯光", "演员"], 1: ["文物", "青铜", "古籍"], 2: ["文化", "精神", "民族"]}


def write_tiny_sheet(folder: Path, n_per_class: int = 12, name: str = "tiny.csv") -> Path:
    """Write a separable three-class sheet (3 × n_per_class texts, each class marked by its own words) as .csv."""
    import numpy as np

    rng = np.random.default_rng(0)
    rows = [
        (c, "".join(rng.choice(ws, 3)) + f"第{i}条" + "好" * (i % 4))
        for c, ws in TINY_WORDS.items()
        for i in range(n_per_class)
    ]
    Path(folder).mkdir(parents=True, exist_ok=True)
    path = Path(folder) / name
    pd.DataFrame(rows, columns=["Label", "Sentence"]).to_csv(path, index=False)
    return path


def tiny_fold(folder: Path, n_per_class: int, n_train: int, n_val: int, hidden: int = 64) -> dict:
    """A tiny random BERT built from the tiny sheet and one fold of its texts, as ``bert.prepare``'s keyword
    arguments: ``n_train`` training texts, ``n_val`` validation texts (0: none), the rest test."""
    import numpy as np
    from transformers import AutoTokenizer

    from nblib import bert
    from nblib.data import load_labelled

    d = load_labelled(write_tiny_sheet(folder, n_per_class))
    enc = str(bert.build_tiny_encoder(d.texts, Path(folder) / "enc", hidden=hidden))
    tok = AutoTokenizer.from_pretrained(enc)
    ds = bert.Encoded(tok, d.texts, 32, d.labels)
    rows = np.random.default_rng(0).permutation(len(d.texts))
    return dict(
        source=enc,
        label_names=d.label_names,
        tokenizer=tok,
        train=ds.subset(rows[:n_train]),
        val=ds.subset(rows[n_train : n_train + n_val]) if n_val else None,
        test=ds.subset(rows[n_train + n_val :]),
    )


def cell_text(nb, tag: str | None = None) -> str:
    """All source and text output of a notebook's code cells (or of those with a tag), for assertions."""
    parts = []
    for cell in nb.cells:
        if cell.cell_type != "code" or (tag and tag not in cell.metadata.get("tags", [])):
            continue
        parts.append(cell.source)
        for o in cell.get("outputs", []):
            parts.append(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


def sheet(texts, labels, text_col: str = "Sentence", label_col: str = "Label") -> pd.DataFrame:
    """A labelled sheet as a DataFrame."""
    return pd.DataFrame({label_col: labels, text_col: texts})


def balanced(n_per_class: int = 6, classes=(0, 1, 2)) -> pd.DataFrame:
    """A sheet with ``n_per_class`` distinct texts in each class."""
    texts = [f"第{c}类的第{i}条评论" for c in classes for i in range(n_per_class)]
    labels = [c for c in classes for _ in range(n_per_class)]
    return sheet(texts, labels)


# a second process that tries to take the run lock of the folder given as its argument; exit 3 when refused
LOCK_CHILD = """
import sys
from nblib.run_lock import RunLock, ResultsLockedError
try:
    RunLock(sys.argv[1]).acquire()
except ResultsLockedError as e:
    print(e)
    sys.exit(3)
"""


def gaussian_task(n: int, prior, rng, sep: float = 1.5, train_prior=(0.5, 0.3, 0.15, 0.05)):
    """Texts of a known generative model: gold labels drawn from ``prior``, and the exact posteriors that a
    classifier trained under ``train_prior`` would give (calibrated there, so biased towards its large classes);
    ``sep`` is the strength of the class signal (weak: small, strong: large)."""
    import numpy as np

    prior = np.asarray(prior)
    y = rng.choice(len(prior), n, p=prior)
    x = rng.normal(0, 1, (n, len(prior)))
    x[np.arange(n), y] += sep
    logits = np.log(np.asarray(train_prior)) + sep * x
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return probs / probs.sum(axis=1, keepdims=True), y
