"""Label issues: texts whose gold label looks wrong, found by cleanlab's confident learning.

``cleanlab.filter.find_label_issues`` estimates from out-of-fold probabilities how often each class is
labelled as each other (the confident joint) and flags that many texts, those the model finds least
likely to carry their given label (``filter_by="prune_by_noise_rate"``). The flagged texts are ranked by
``self_confidence``: the probability of the given label, lowest first. The probabilities are the
calibrated out-of-fold ones (``ModelResults.calibrated_probs``) of one model, or their mean over several
models (an ensemble: a text is flagged when the models together find its label unlikely).

The sheet for the annotator also counts how many of the study's models predict another class than the
given one (a column beside cleanlab's ranking: all models rejecting a label is a strong hint on its own).
"""

from __future__ import annotations

from collections.abc import Sequence

import cleanlab.filter
import cleanlab.rank
import numpy as np
import pandas as pd

from .results import ModelResults

RANKED_BY = "self_confidence"  # cleanlab's ranking: the probability of the given label, lowest first


def mean_probs(results: dict[str, ModelResults], models: Sequence[str]) -> np.ndarray:
    """The mean of the models' calibrated out-of-fold probabilities, one row per text.

    Args:
        results: each model's out-of-fold predictions, by name.
        models: the models to average (one name: that model's probabilities).

    Raises:
        ValueError: no models, an unknown name, or models whose predictions are not of the same texts in the same order.
    """
    unknown = [m for m in models if m not in results]
    if unknown or not models:
        raise ValueError(f"models={list(models)}: {unknown or 'none'} not among the finished models {sorted(results)}.")
    first = results[models[0]].predictions["index"].to_numpy()
    other = [m for m in models if not np.array_equal(results[m].predictions["index"].to_numpy(), first)]
    if other:
        raise ValueError(f"{other} are not predictions of the same texts as {models[0]} (other data or folds).")
    return np.mean([results[m].calibrated_probs for m in models], axis=0)


def find_label_issues(
    results: dict[str, ModelResults],
    label_names: Sequence[str],
    models: Sequence[str],
    ranked_by: str = RANKED_BY,
) -> pd.DataFrame:
    """Texts whose given label cleanlab finds likely wrong, most likely first, as a sheet for the annotator.

    Args:
        results: every finished model's out-of-fold predictions, by name (same texts in the same order).
        label_names: the class names by id.
        models: whose calibrated probabilities are used (their mean when several, see :func:`mean_probs`).
        ranked_by: cleanlab's ranking of the flagged texts (``self_confidence``, ``normalized_margin``,
            ``confidence_weighted_entropy``).

    Returns:
        One row per flagged text: ``row`` and ``source`` (the sheet row and its file), ``text``, ``given label``, ``suggested label`` (the
        most probable class), ``p(given)``, ``p(suggested)``, ``label quality`` (cleanlab's score, low = suspect),
        ``models rejecting it`` (of all ``results``, how many predict another class than the given one).
    """
    probs = mean_probs(results, models)
    pred = results[models[0]].predictions
    gold = pred["gold"].to_numpy()
    issues = cleanlab.filter.find_label_issues(gold, probs, return_indices_ranked_by=ranked_by, n_jobs=1)
    quality = cleanlab.rank.get_label_quality_scores(gold, probs, method=ranked_by)
    suggested = probs.argmax(axis=1)
    rejecting = np.sum([r.predictions["pred"].to_numpy() != gold for r in results.values()], axis=0)
    return pd.DataFrame(
        {
            "row": pred["row"].to_numpy()[issues],
            # the row's sheet (the main one, or an annotator sheet read back); empty without a source column
            "source": pred["source"].to_numpy()[issues] if "source" in pred else "",
            "text": pred["text"].to_numpy()[issues],
            "given label": [label_names[i] for i in gold[issues]],
            "suggested label": [label_names[i] for i in suggested[issues]],
            "p(given)": probs[issues, gold[issues]].round(3),
            "p(suggested)": probs[issues, suggested[issues]].round(3),
            "label quality": quality[issues].round(3),
            "models rejecting it": [f"{n} of {len(results)}" for n in rejecting[issues]],
        }
    )
