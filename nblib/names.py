"""Display names: what figures and paper tables show for the ids the code uses (models, metrics, methods).

``display("lr_tfidf_char")`` is "TF-IDF (char 1–3) + LR", ``display("macro_f1")`` "Macro-F1",
``display("bert_tiny-random")`` "BERT (tiny-random)". A study can override any of them with a mapping
(``display_names``, e.g. from its study file); ids that are not known are shown as they are. Machine-readable
files (CSV) keep the ids.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import pandas as pd

DISPLAY_NAMES: dict[str, str] = {
    # baselines (nblib.baselines.MODELS); a unit suffix (_word, _char) is added by display()
    "lr_tfidf_char": "TF-IDF (char 1–3) + LR",
    "mlp_onehot": "MLP (one-hot)",
    "mlp_tf": "MLP (term frequency)",
    "mlp_tfidf": "MLP (TF-IDF)",
    "mlp_word2vec": "MLP (word2vec)",
    "lstm_word2vec": "LSTM (word2vec)",
    "lstm_random": "LSTM (random embeddings)",
    # metrics
    "accuracy": "Accuracy",
    "macro_f1": "Macro-F1",
    "weighted_f1": "Weighted F1",
    "precision": "Precision",
    "recall": "Recall",
    "f1": "F1",
    "support": "Support",
    "train_loss": "Training loss",
    "val_loss": "Validation loss",
    "val_macro_f1": "Validation macro-F1",
    "probe_loss": "Probe loss",
    # class-share estimators (CC, ACC, PCC, PACC, EMQ, PPI) are not listed: they keep their standard abbreviations
    # fine-tuning arms of 06_unlabelled
    "tapt": "TAPT",
    "self": "Self-training",
    "both": "TAPT + self-training",
}
STUDY_NAMES: dict[str, str] = {}  # the study's overrides, set by use()
UNITS = {"word": "words", "char": "characters"}
ARMS = {"_tapt_self": " + TAPT + self-training", "_tapt": " + TAPT", "_self": " + self-training"}
_BASELINE = re.compile(r"^(?P<model>(?:mlp|lstm)_[a-z0-9]+)_(?P<unit>word|char)$")


def use(display_names: Mapping[str, str] | None) -> None:
    """Make ``display_names`` (e.g. the study file's) the overrides every figure and table uses from now on.

    Args:
        display_names: display names by id; None or empty: the built-in names only.
    """
    STUDY_NAMES.clear()
    STUDY_NAMES.update({str(k): str(v) for k, v in (display_names or {}).items()})


def display(name: object, display_names: Mapping[str, str] | None = None) -> str:
    """The name a figure or paper table shows for ``name`` (an id of a model, metric or method).

    Args:
        name: the id, e.g. ``lr_tfidf_char``, ``mlp_tfidf_word``, ``bert_tiny-random``, ``macro_f1``, ``PACC``.
        display_names: overrides by id; they win over those set by :func:`use` (the study's), which win over the
            built-in names.

    Returns:
        The display name; an id this module does not know comes back unchanged (as text).
    """
    text = str(name)
    for overrides in (display_names or {}, STUDY_NAMES):
        if text in overrides:
            return str(overrides[text])
    if text in DISPLAY_NAMES:
        return DISPLAY_NAMES[text]
    if m := _BASELINE.match(text):
        base = DISPLAY_NAMES.get(m["model"], m["model"])
        return base[:-1] + f", {UNITS[m['unit']]})" if base.endswith(")") else f"{base} ({UNITS[m['unit']]})"
    if text.startswith("bert_") and len(text) > len("bert_"):
        run = text.removeprefix("bert_")
        arm = next((a for a in ARMS if run.endswith(a)), "")
        return f"BERT ({run.removesuffix(arm) if arm else run})" + ARMS.get(arm, "")
    return text


def display_words(text: object, display_names: Mapping[str, str] | None = None) -> str:
    """``text`` (e.g. a column name such as ``macro_f1 gain CI`` or ``only lr_tfidf_char right``) with each word
    that is a known id replaced by its display name (``Macro-F1 gain CI``); other words stay.

    Args:
        text: the text.
        display_names: overrides by id.
    """
    whole = display(text, display_names)
    if whole != str(text):
        return whole
    return " ".join(display(w, display_names) for w in str(text).split(" "))


def rename(table: pd.DataFrame, display_names: Mapping[str, str] | None = None, columns: bool = True) -> pd.DataFrame:
    """``table`` with display names in its index (every level) and, if ``columns``, its column names.

    Cells are left alone (texts of the sheet are never renamed); use :func:`display` on a column of ids.

    Args:
        table: a result table whose index and column names are ids.
        display_names: overrides by id.
        columns: also rename the column names (every level).
    """

    def name(value: object) -> object:
        return display(value, display_names) if isinstance(value, str) else value

    out = table.rename(index=name)
    return out.rename(columns=name) if columns else out
