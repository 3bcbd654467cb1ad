"""Label new texts with a saved fine-tuned model (the final model of 03_bert_cv, or any fold model).

    python -m nblib.predict MODEL_DIR in.xlsx out.xlsx --column Sentence

Texts are batched in length order (least padding) with a progress bar, on GPU when there is one.
Empty texts are kept in place with no prediction; nothing is dropped.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from transformers import AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase

from . import bert
from .sheets import DataError, Params, clean_text, read_sheet, write_table, writer_kind

log = logging.getLogger(__name__)
NOTEBOOK_PARAMS = Params(
    columns="input_col=", sheet="input_sheet=", header_row="input_header_row=", encoding="input_encoding="
)  # how 05_predict names predict_file's parameters
CLI_PARAMS = Params(columns="--column ", sheet="--sheet ", header_row="--header-row ", encoding="--encoding ")


def load_model(model_dir: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A saved classifier and its tokenizer; a clear error when the folder is not one.

    Args:
        model_dir: a folder written by ``save_pretrained`` (``<run>/final`` or ``<run>/fold_models/fold_<k>``).

    Returns:
        The model and its tokenizer.

    Raises:
        bert.ModelNotAvailableError: the folder is a results folder of a run, or holds no saved model.
    """
    model_dir = Path(model_dir)
    if (model_dir / "folds").is_dir() or (model_dir / "fold_models").is_dir():
        final = model_dir / "final"
        raise bert.ModelNotAvailableError(
            f"{model_dir} is the results folder of a run, not a saved model: pass {final} (trained on all texts)"
            + ("" if (final / "config.json").exists() else ", once the run has trained it,")
            + f" or {model_dir / 'fold_models'}/fold_<k>."
        )
    config = model_dir / "config.json"
    if not config.exists() or "model_type" not in json.loads(config.read_text()):
        raise bert.ModelNotAvailableError(
            f"No saved model in {model_dir} (no model's config.json). Pass the 'final' folder or a "
            f"'fold_models/fold_<k>' folder written by 03_bert_cv, e.g. results/<study>/models/<run>/final."
        )
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    return model, bert.load_tokenizer(str(model_dir))


def predict_texts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    batch_size: int = 64,
    max_len: int = 128,
    device: str = "auto",
    progress: bool = True,
    truncation: str = "head",
) -> pd.DataFrame:
    """Predicted label id and name, every class probability, and whether the text was cut, one row per text.

    Args:
        model: a classifier from :func:`load_model`.
        tokenizer: its tokenizer.
        texts: the texts; empty ones get no prediction (NaN).
        batch_size: texts per batch.
        max_len: tokens per text read by the model; longer texts are cut (``truncated`` is True).
        device: "auto", "cpu" or "cuda".
        progress: show a progress bar.
        truncation: "head" (keep the start of a long text) or "head+tail" (its start and its end).

    Returns:
        Columns ``pred_id``, ``pred_label``, ``prob_<label>`` for every label, and ``truncated``.
    """
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    texts = [clean_text(t) for t in texts]
    present = [i for i, t in enumerate(texts) if t]
    probs = np.full((len(texts), len(names)), np.nan)
    truncated = np.zeros(len(texts), dtype=bool)
    if present:
        accelerator = Accelerator(cpu=device == "cpu" or not torch.cuda.is_available())
        ds = bert.Encoded(tokenizer, [texts[i] for i in present], max_len, truncation=truncation)
        truncated[present] = ds.truncated
        loader = accelerator.prepare(bert.eval_loader(ds, bert.make_collator(tokenizer, accelerator), batch_size))
        model = accelerator.prepare(model)
        probs[present] = bert.softmax(
            bert.evaluate(model, loader, accelerator, desc="predicting" if progress else None)
        )
    out = pd.DataFrame(
        {"pred_id": pd.array([int(p.argmax()) if not np.isnan(p[0]) else None for p in probs], dtype="Int64")}
    )
    out["pred_label"] = [names[i] if i is not pd.NA else "" for i in out["pred_id"]]
    for j, name in enumerate(names):
        out[f"prob_{name}"] = probs[:, j]
    out["truncated"] = truncated
    if len(present) < len(texts):
        log.warning("%d empty text(s) got no prediction (rows kept, prediction left blank).", len(texts) - len(present))
    return out


def predict_file(
    model_dir: str | Path,
    in_path: str | Path,
    out_path: str | Path,
    column: str = "Sentence",
    sheet: str | int | None = None,
    batch_size: int = 64,
    max_len: int = 128,
    device: str = "auto",
    overwrite: bool = False,
    header_row: int = 1,
    encoding: str | None = None,
    truncation: str = "head",
    params: Params = NOTEBOOK_PARAMS,
) -> pd.DataFrame:
    """Read a sheet, predict its ``column``, write the sheet with the predictions appended.

    Args:
        model_dir: the saved model (see :func:`load_model`).
        in_path: the sheet to label (.xlsx, .csv, .tsv), read by :func:`nblib.sheets.read_sheet`.
        out_path: where to write (.xlsx, .csv or .tsv, by suffix), by :func:`nblib.sheets.write_table`.
        column: the text column.
        sheet: sheet name or 0-based index of an .xlsx input (None: the first).
        batch_size: texts per batch.
        max_len: tokens per text read by the model.
        device: "auto", "cpu" or "cuda".
        overwrite: replace an existing output file.
        header_row: the row of the column names in the input (1-based).
        encoding: the encoding of a CSV/TSV input (None: detected).
        truncation: "head" or "head+tail" (see :class:`nblib.bert.Encoded`).
        params: how the caller names these parameters, for the error messages.

    Returns:
        The input's columns followed by the prediction columns (see :func:`predict_texts`).
    """
    out_path = Path(out_path)
    if out_path.exists() and not overwrite:
        raise FileExistsError(
            f"{out_path} exists; choose another output file, or pass overwrite=True (--overwrite on the command line)."
        )
    writer_kind(out_path)
    model, tokenizer = load_model(model_dir)
    table = read_sheet(in_path, [column], sheet, header_row, encoding, params)
    for problem, rows, action in table.notes:
        log.warning("%s: %d row(s) %s — %s", Path(in_path).name, len(rows), problem, action)
    clash = [c for c in predict_texts(model, tokenizer, [], progress=False).columns if c in table.df.columns]
    if clash:
        raise DataError(
            f"{Path(in_path).name} already has column(s) {clash} (a sheet of earlier predictions?): "
            f"rename or remove them, so that the new predictions do not mix with them."
        )
    predictions = predict_texts(
        model,
        tokenizer,
        ["" if pd.isna(v) else str(v) for v in table.df[column]],
        batch_size,
        max_len,
        device,
        truncation=truncation,
    )
    result = pd.concat([table.df.reset_index(drop=True), predictions], axis=1)
    write_table(result, out_path)
    log.info(
        "Wrote %d predictions to %s (%d texts cut at max_len=%d).",
        len(result),
        out_path,
        int(result["truncated"].sum()),
        max_len,
    )
    return result


def main(argv: list[str] | None = None) -> int:
    """The command line: ``python -m nblib.predict MODEL_DIR IN OUT --column C``; returns the exit status.

    Args:
        argv: the arguments (None: ``sys.argv[1:]``).
    """
    ap = argparse.ArgumentParser(prog="python -m nblib.predict", description="Label texts with a saved model.")
    ap.add_argument("model_dir", help="a folder written by 03_bert_cv (…/final or …/fold_models/fold_<k>)")
    ap.add_argument("input", help=".xlsx, .csv or .tsv")
    ap.add_argument("output", help=".xlsx, .csv or .tsv to write (the suffix decides the format)")
    ap.add_argument("--column", default="Sentence", help="the text column (default: Sentence)")
    ap.add_argument("--sheet", default=None)
    ap.add_argument("--header-row", type=int, default=1, help="the row of the column names (default: 1)")
    ap.add_argument("--encoding", default=None, help="encoding of a CSV/TSV input (default: detected)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument(
        "--truncation",
        default="head",
        choices=bert.TRUNCATIONS,
        help="what a text longer than --max-len keeps: its start, or its start and end",
    )
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        result = predict_file(
            args.model_dir,
            args.input,
            args.output,
            args.column,
            args.sheet,
            args.batch_size,
            args.max_len,
            args.device,
            args.overwrite,
            args.header_row,
            args.encoding,
            args.truncation,
            CLI_PARAMS,
        )
    except (DataError, FileNotFoundError, FileExistsError, bert.ModelNotAvailableError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(result["pred_label"].value_counts().to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
