"""Label new texts with a saved fine-tuned model (the final model of 03_bert_cv, or any fold model).

    python -m nblib.predict MODEL_DIR in.xlsx out.xlsx --column Sentence

Texts are batched in length order (least padding) with a progress bar, on GPU when there is one.
Empty texts are kept in place with no prediction; nothing is dropped.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from transformers import AutoModelForSequenceClassification

from . import bert
from .data import DataError, clean_text, read_table, require_columns

log = logging.getLogger(__name__)


def load_model(model_dir: str | Path):
    """A saved classifier and its tokenizer; a clear error when the folder is not one."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise bert.ModelNotAvailableError(
            f"No saved model in {model_dir} (no config.json). Pass the 'final' folder or a 'fold_models/fold_<k>' "
            f"folder written by 03_bert_cv, e.g. results/<study>/models/<run>/final.")
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    return model, bert.load_tokenizer(str(model_dir))


def predict_texts(model, tokenizer, texts: Sequence[str], batch_size: int = 64, max_len: int = 128,
                  device: str = "auto", progress: bool = True) -> pd.DataFrame:
    """Predicted label id and name and every class probability, one row per text (NaN for empty texts)."""
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    texts = [clean_text(t) for t in texts]
    present = [i for i, t in enumerate(texts) if t]
    probs = np.full((len(texts), len(names)), np.nan)
    if present:
        accelerator = Accelerator(cpu=device == "cpu" or not torch.cuda.is_available())
        ds = bert.Encoded(tokenizer, [texts[i] for i in present], max_len)
        loader = accelerator.prepare(bert.eval_loader(ds, bert.make_collator(tokenizer, accelerator), batch_size))
        model = accelerator.prepare(model)
        probs[present] = bert.softmax(bert.evaluate(model, loader, accelerator, desc="predicting" if progress else None))
    out = pd.DataFrame({"pred_id": pd.array([int(p.argmax()) if not np.isnan(p[0]) else None for p in probs], dtype="Int64")})
    out["pred_label"] = [names[i] if i is not pd.NA else "" for i in out["pred_id"]]
    for j, name in enumerate(names):
        out[f"prob_{name}"] = probs[:, j]
    if len(present) < len(texts):
        log.warning("%d empty text(s) got no prediction (rows kept, prediction left blank).", len(texts) - len(present))
    return out


def predict_file(model_dir: str | Path, in_path: str | Path, out_path: str | Path, column: str = "Sentence",
                 sheet: str | int | None = None, batch_size: int = 64, max_len: int = 128, device: str = "auto",
                 overwrite: bool = False) -> pd.DataFrame:
    """Read a sheet, predict its ``column``, write the sheet with the predictions appended as .xlsx/.csv."""
    out_path = Path(out_path)
    if out_path.exists() and not overwrite:
        raise FileExistsError(f"{out_path} exists; choose another output file or pass --overwrite.")
    model, tokenizer = load_model(model_dir)
    table = read_table(in_path, sheet)
    require_columns(table, [column], Path(in_path))
    texts = ["" if pd.isna(v) else str(v) for v in table[column]]
    result = pd.concat([table.reset_index(drop=True), predict_texts(model, tokenizer, texts, batch_size, max_len, device)],
                       axis=1)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if out_path.suffix.lower() == ".csv":
        result.to_csv(out_path, index=False)
    else:
        result.to_excel(out_path, index=False)
    log.info("Wrote %d predictions to %s", len(result), out_path)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nblib.predict", description="Label texts with a saved model.")
    ap.add_argument("model_dir", help="a folder written by 03_bert_cv (…/final or …/fold_models/fold_<k>)")
    ap.add_argument("input", help=".xlsx, .csv or .tsv")
    ap.add_argument("output", help=".xlsx or .csv to write")
    ap.add_argument("--column", default="Sentence", help="the text column (default: Sentence)")
    ap.add_argument("--sheet", default=None)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        result = predict_file(args.model_dir, args.input, args.output, args.column, args.sheet, args.batch_size,
                              args.max_len, args.device, args.overwrite)
    except (DataError, FileNotFoundError, FileExistsError, bert.ModelNotAvailableError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(result["pred_label"].value_counts().to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
