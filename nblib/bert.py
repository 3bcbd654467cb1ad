"""Fine-tuning a Hugging Face encoder for text classification: loading (offline-ready), batching, one fold.

Each piece fixes a defect of the original study's code: a fresh pretrained model per fold, attention
masks, dynamic padding of length-grouped batches, ``torch.optim.AdamW`` with linear warm-up/decay and
no weight decay on biases and LayerNorm, best epoch chosen on a validation part of the training folds,
and checkpoints written with ``save_pretrained`` (safetensors) that reload into a plain model.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from safetensors import SafetensorError, safe_open
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertModel,
    BertTokenizer,
    DataCollatorWithPadding,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    get_linear_schedule_with_warmup,
)
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.utils import logging as hf_logging

from .hardware import set_seed
from .layout import TINY_RANDOM as TINY_RANDOM
from .layout import ModelNotAvailableError, finished_model
from .metrics import improves, validation_scores
from .settings import SelectOn, runtime, setting
from .sheets import DataError
from .study import Study

log = logging.getLogger(__name__)
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# any one of these makes a tokenizer (fast tokenizer, WordPiece, BPE, SentencePiece vocabularies)
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model")
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
MAX_UNKNOWN_SHARE = 0.5  # a tokenizer that maps more of a sheet's tokens to [UNK] does not fit the texts
SMALL_VOCABULARY = 2000  # fewer tokens: a smoke-test vocabulary of the labelled texts' characters (tiny-random)
COPY_AGAIN = "copy the complete model folder again (or save it again with save_pretrained()), or retrain it"


# --- finding and building encoders ------------------------------------------------------------------


def model_source(model: str, study: Study) -> str:
    """The encoder to train: a local folder or hub id (checked), or the tiny random BERT built for the study.

    Args:
        model: a hub id, a local folder, or ``tiny-random``.
        study: the study (its texts build the tiny encoder's vocabulary; it is saved in the study folder).
    """
    if model != TINY_RANDOM:
        return resolve_model(model)
    folder = study.folder("encoders") / TINY_RANDOM
    if not (folder / "config.json").exists():
        build_tiny_encoder(study.data.texts, folder, seed=study.settings.seed)
    return str(folder)


def resolve_model(model: str, pass_as: tuple[str, str] = ("BERT_MODEL", "model")) -> str:
    """Return a loadable source for ``model`` (a local folder, or a hub id found in the cache or online).

    Fails fast with instructions when the model cannot be had: the hub is probed once with a short timeout
    (no retry loop), and the message says how to get the model where the hub is unreachable: a hub mirror
    (``HF_ENDPOINT``), ModelScope, or a folder copied from another machine (see docs/models.md).

    Args:
        model: a local folder or a hub id.
        pass_as: the make variable and notebook parameter the message tells to pass the folder as.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelNotAvailableError(
                f"{path} is a folder but holds no config.json: it is not a saved "
                f"Hugging Face model. Pass the folder that save_pretrained() wrote."
            )
        return str(path.resolve())  # absolute: worker processes may start elsewhere
    if model.startswith((".", "/", "~")) or os.sep in model and not _looks_like_hub_id(model):
        raise ModelNotAvailableError(f"Model folder {path.resolve()} does not exist.")
    with contextlib.suppress(OSError, ValueError):
        AutoConfig.from_pretrained(model, local_files_only=True)
        return model
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    unreachable = "HF_HUB_OFFLINE is set" if offline else _hub_unreachable(hub_endpoint())
    if not unreachable:
        try:
            AutoConfig.from_pretrained(model)
            return model
        except (OSError, ValueError) as e:
            unreachable = f"the hub answered: {str(e).splitlines()[0][:200]}"
    raise ModelNotAvailableError(model_help(model, unreachable, pass_as))


def hub_endpoint() -> str:
    """The Hugging Face hub this process downloads from: ``HF_ENDPOINT`` (a mirror), else huggingface.co."""
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT


def _hub_unreachable(endpoint: str, timeout: float = 3.0) -> str | None:
    """Why the hub at ``endpoint`` cannot be reached (one request, ``timeout`` seconds, no retries); None: it
    answers (any HTTP status)."""
    import httpx

    try:
        httpx.head(endpoint, timeout=timeout)
    except httpx.HTTPError as e:
        return f"{endpoint} cannot be reached ({type(e).__name__}: {e})"
    return None


def model_help(model: str, why: str, pass_as: tuple[str, str] = ("BERT_MODEL", "model")) -> str:
    """What to do when ``model`` is neither a local folder nor in the cache and cannot be downloaded.

    Args:
        model: the hub id asked for.
        why: why it could not be downloaded.
        pass_as: the make variable and notebook parameter to pass the folder as.
    """
    folder = f"models/{Path(model).name}"
    return (
        f"Model '{model}' is not a local folder, not in the Hugging Face cache, and could not be downloaded: {why}.\n"
        f"Get it into a local folder one of these ways (docs/models.md):\n"
        f"  - a hub mirror (e.g. in China): HF_ENDPOINT=https://hf-mirror.com hf download {model} --local-dir {folder}\n"
        f"  - ModelScope: pip install modelscope; modelscope download --model <its ModelScope id> --local_dir {folder}\n"
        f"    (search modelscope.cn for {Path(model).name})\n"
        f"  - on a machine with internet: hf download {model} --local-dir {folder}, then copy the folder here\n"
        f"Then pass the folder: make notebooks {pass_as[0]}=$PWD/{folder}, or papermill … -p {pass_as[1]} /path/to/{folder}."
    )


def _looks_like_hub_id(model: str) -> bool:
    parts = model.split("/")
    return len(parts) == 2 and all(parts) and not model.startswith((".", "/", "~"))


def build_tiny_encoder(
    texts: Sequence[str],
    out_dir: str | Path,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 2,
    max_positions: int = 512,
    seed: int = 0,
    intermediate: int | None = None,
    vocab_size: int | None = None,
) -> Path:
    """A randomly initialised BERT (small by default) with a character vocabulary built from ``texts``.

    For tests, smoke runs and speed benchmarks where no pretrained model is available; its scores say nothing
    about BERT. ``bert-base-chinese``'s shape (the same compute, no download): ``hidden=768, layers=12,
    heads=12, intermediate=3072, vocab_size=21128``.

    Args:
        texts: the texts whose characters make the vocabulary.
        out_dir: where to save the model and tokenizer.
        hidden: hidden size.
        layers: number of transformer layers.
        heads: attention heads per layer.
        max_positions: the most tokens per text.
        seed: seed of the random initialisation.
        intermediate: size of the feed-forward layers (None: 2 × hidden).
        vocab_size: pad the vocabulary with unused CJK characters to this size (None: the texts' characters).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    chars = sorted({c for t in texts for c in t.lower() if not c.isspace()})
    pieces = [f"##{c}" for c in chars if c.isascii() and c.isalnum()]
    vocab = SPECIAL_TOKENS + chars + pieces
    if vocab_size is not None:
        if vocab_size < len(vocab):
            raise ValueError(f"vocab_size={vocab_size}, but the texts alone need {len(vocab)} entries.")
        seen = set(vocab)
        vocab += [c for c in map(chr, range(0x4E00, 0xA000)) if c not in seen][: vocab_size - len(vocab)]
    (out_dir / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(vocab=str(out_dir / "vocab.txt"))
    tokenizer.save_pretrained(out_dir)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate or 2 * hidden,
        max_position_embeddings=max_positions,
    )
    BertModel(config).save_pretrained(out_dir)
    return out_dir


def check_model_folder(folder: str | Path) -> Path:
    """A local model folder, checked before loading: completely saved (its done marker,
    :func:`nblib.layout.finished_model`), a readable ``config.json`` of a model, undamaged weights and
    tokenizer files. Without this, transformers loads a folder that lacks its tokenizer files with a
    5-token vocabulary (every character ``[UNK]``), and damaged files give tracebacks that name no file.

    Args:
        folder: the model folder.

    Raises:
        ModelNotAvailableError: what is wrong, with the file and what to do.
    """
    path = finished_model(folder)
    config = path / "config.json"
    try:
        saved = json.loads(config.read_text(encoding="utf-8"))
    except OSError as e:
        raise ModelNotAvailableError(f"Cannot read {config} ({e.strerror}): check its permissions.") from None
    except ValueError as e:
        raise ModelNotAvailableError(
            f"{config} is damaged: not valid JSON ({e}); it was cut off or edited. {COPY_AGAIN.capitalize()}."
        ) from None
    if not isinstance(saved, dict) or "model_type" not in saved:
        raise ModelNotAvailableError(
            f"{config} is not the config of a Hugging Face model (it has no model_type): pass the folder that "
            f"save_pretrained() wrote, or {COPY_AGAIN}."
        )
    present = [f for f in TOKENIZER_FILES if (path / f).is_file()]
    if not present:
        raise ModelNotAvailableError(
            f"{path} has no tokenizer files (none of {', '.join(TOKENIZER_FILES)}); without them every character "
            f"would be read as [UNK]. {COPY_AGAIN.capitalize()} — a saved model folder holds its tokenizer too."
        )
    _check_weights(path)
    return path


def _check_weights(path: Path) -> None:
    """A clear error when a model folder has no weights, or its safetensors files are cut off or damaged."""
    found = [f for f in WEIGHT_FILES if (path / f).is_file()]
    if not found:
        raise ModelNotAvailableError(f"{path} has no model weights (none of {', '.join(WEIGHT_FILES)}): {COPY_AGAIN}.")
    files = [path / found[0]]
    if found[0].endswith(".index.json"):
        try:
            shards = sorted(set(json.loads(files[0].read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ModelNotAvailableError(f"{files[0]} is damaged ({type(e).__name__}: {e}): {COPY_AGAIN}.") from None
        files = [path / f for f in shards]
    for f in files:
        if not f.is_file():
            raise ModelNotAvailableError(f"{f} is missing (listed in {found[0]}): {COPY_AGAIN}.")
        if f.stat().st_size == 0:
            raise ModelNotAvailableError(f"{f} is empty (0 bytes): the save or the copy was cut off; {COPY_AGAIN}.")
        if f.suffix == ".safetensors":
            try:
                with safe_open(str(f), "pt"):
                    pass
            except (SafetensorError, OSError) as e:
                raise ModelNotAvailableError(
                    f"{f} is damaged ({e}; {f.stat().st_size} bytes): the save or the copy was cut off. {COPY_AGAIN.capitalize()}."
                ) from None


def _local(source: str) -> bool:
    return Path(source).expanduser().is_dir()


def load_tokenizer(source: str) -> PreTrainedTokenizerBase:
    """The tokenizer of a pretrained model; a local folder is checked first (:func:`check_model_folder`), and a
    tokenizer whose vocabulary holds nothing but special tokens is refused.

    Args:
        source: a model name on the Hub or a local folder.

    Raises:
        ModelNotAvailableError: the folder is half-written, damaged or lacks its tokenizer files.
    """
    if _local(source):
        check_model_folder(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise ModelNotAvailableError(f"The tokenizer of {source} cannot be loaded ({e}): {COPY_AGAIN}.") from None
    if len(tokenizer) <= len(tokenizer.all_special_tokens):
        raise ModelNotAvailableError(
            f"The tokenizer of {source} has {len(tokenizer)} tokens, all special ({', '.join(tokenizer.all_special_tokens)}): "
            f"its vocabulary file is missing or empty, and every character would be read as "
            f"{tokenizer.unk_token}. {COPY_AGAIN.capitalize()}."
        )
    return tokenizer


def check_vocabulary(tokenizer: PreTrainedTokenizerBase, ids: Sequence[Sequence[int]], texts: Sequence[str]) -> None:
    """Refuse a tokenizer that reads most of these texts' tokens as unknown (``[UNK]``): a vocabulary that does not
    fit them (a missing or wrong tokenizer file, a model for another language) would give meaningless labels.

    A small vocabulary (under :data:`SMALL_VOCABULARY` tokens) is a smoke-test model's, e.g. tiny-random's, made of
    the labelled texts' characters, which other texts need not share: it gets a warning instead.

    Args:
        tokenizer: the tokenizer.
        ids: the token ids of ``texts`` (special tokens left out).
        texts: the texts, for the message.

    Raises:
        ModelNotAvailableError: more than :data:`MAX_UNKNOWN_SHARE` of the tokens are unknown.
    """
    unk = tokenizer.unk_token_id
    total = sum(len(i) for i in ids)
    if unk is None or not total:
        return
    unknown = sum(t == unk for i in ids for t in i)
    if unknown <= MAX_UNKNOWN_SHARE * total:
        return
    example = next(t for t, i in zip(texts, ids) if unk in i)
    message = (
        f"The tokenizer of {tokenizer.name_or_path} reads {unknown} of the {total} tokens of these texts as "
        f"{tokenizer.unk_token} (e.g. {example[:40]!r}): its vocabulary does not fit them (a tokenizer file "
        f"missing or from another model, or a model for another language). {COPY_AGAIN.capitalize()}, or use "
        f"an encoder for Chinese."
    )
    if len(tokenizer) >= SMALL_VOCABULARY:
        raise ModelNotAvailableError(message)
    log.warning("%s (A small test vocabulary of %d tokens: going on.)", message, len(tokenizer))


def max_positions(config: PretrainedConfig) -> int | None:
    """The most tokens per text (special tokens included) a model can read: its ``max_position_embeddings``, less
    the positions RoBERTa-style models reserve for padding; None when the config does not say.

    Args:
        config: the model's config.
    """
    n = getattr(config, "max_position_embeddings", None)
    if not isinstance(n, int):
        return None
    if (
        config.model_type in ("roberta", "xlm-roberta", "camembert", "xlm-roberta-xl")
        and config.pad_token_id is not None
    ):
        return n - config.pad_token_id - 1
    return n


def check_max_len(
    max_len: int, config: PretrainedConfig | str, tokenizer: PreTrainedTokenizerBase, name: str = "max_len="
) -> None:
    """Refuse a ``max_len`` outside what the model can read: at least one text token besides the special tokens,
    at most :func:`max_positions` (a longer one fails deep in the model with a tensor-size error).

    Args:
        max_len: tokens per text, special tokens included.
        config: the model's config, or the model (a local folder or hub id) to read it from.
        tokenizer: its tokenizer (how many special tokens each text gets).
        name: the parameter as the caller spells it before a value, for the message (``max_len=``, ``--max-len ``).

    Raises:
        DataError: out of range, with the range.
    """
    if isinstance(config, str):
        config = AutoConfig.from_pretrained(config)
    low, high = tokenizer.num_special_tokens_to_add() + 1, max_positions(config)
    if (
        not isinstance(max_len, (int, np.integer))
        or isinstance(max_len, bool)
        or max_len < low
        or (high and max_len > high)
    ):
        limit = f"to {high}, the model's max_position_embeddings" if high else "or more"
        raise DataError(
            f"{name}{max_len!r} is out of range: give a whole number from {low} (its {low - 1} special tokens and "
            f"one token of text) {limit} ({getattr(config, '_name_or_path', '') or 'this model'})."
        )


def load_classifier_and_new(source: str, label_names: Sequence[str]) -> tuple[PreTrainedModel, set[str]]:
    """The pretrained encoder with a new classification head (a fresh copy every call), and the names of
    the parameters the checkpoint did not have (the head; for some checkpoints also the pooler).

    Args:
        source: a model name on the Hub or a local folder.
        label_names: the class names, in label-id order.
    """
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized: classifier" notice, expected for every fold
    try:
        model, info = load_pretrained(
            AutoModelForSequenceClassification,
            source,
            num_labels=len(label_names),
            id2label=dict(enumerate(label_names)),
            label2id={n: i for i, n in enumerate(label_names)},
            output_loading_info=True,
        )
    finally:
        hf_logging.set_verbosity(level)
    return model, set(info["missing_keys"])


def load_pretrained(auto_class: type, source: str, **kwargs: object) -> object:
    """``auto_class.from_pretrained(source, **kwargs)`` with a local folder checked first
    (:func:`check_model_folder`), and a load error turned into one message that names the folder.

    Args:
        auto_class: e.g. ``AutoModelForSequenceClassification``, ``AutoModelForMaskedLM``.
        source: a model name on the Hub or a local folder.
        **kwargs: passed on to ``from_pretrained``.

    Raises:
        ModelNotAvailableError: the folder is half-written or damaged, or the model cannot be loaded from it.
    """
    if _local(source):
        check_model_folder(source)
    try:
        return auto_class.from_pretrained(source, **kwargs)
    except (OSError, ValueError, SafetensorError) as e:
        raise ModelNotAvailableError(
            f"The model in {source} cannot be loaded ({type(e).__name__}: {str(e)[:300]}): {COPY_AGAIN}."
        ) from None


def load_classifier(source: str, label_names: Sequence[str]) -> PreTrainedModel:
    """The pretrained encoder with a new classification head (a fresh copy every call).

    Args:
        source: a model name on the Hub or a local folder.
        label_names: the class names, in label-id order.
    """
    return load_classifier_and_new(source, label_names)[0]


def encoder_checksum(model: PreTrainedModel, new: set[str] = frozenset()) -> float:
    """A fingerprint of the encoder weights that came from the checkpoint: equal for every fresh fold model.

    The head is left out, and so are the parameters in ``new`` (from :func:`load_classifier_and_new`): a pooler
    the checkpoint lacks is initialised at random, differently in every fold.
    """
    prefix = model.base_model_prefix + "."
    with torch.no_grad():
        return float(
            sum(p.double().sum() for n, p in model.named_parameters() if n.startswith(prefix) and n not in new)
        )


# --- data -------------------------------------------------------------------------------------------

TRUNCATIONS = ("head", "head+tail")


class Encoded(torch.utils.data.Dataset):
    """Tokenized texts (no padding here), with labels and their index for re-ordering after gathering.

    A text longer than ``max_len`` tokens ([CLS] and [SEP] included) is cut: ``truncation="head"`` keeps its
    start, ``"head+tail"`` its first and last halves (of the room left), so that a closing verdict survives.
    ``truncated`` marks the cut texts; their number is logged.

    Args:
        tokenizer: the model's tokenizer.
        texts: the texts.
        max_len: the most tokens per text.
        labels: label ids, one per text (None for unlabelled texts).
        truncation: ``"head"`` or ``"head+tail"``.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        texts: Sequence[str],
        max_len: int,
        labels: Sequence[int] | None = None,
        truncation: str = "head",
    ) -> None:
        if truncation not in TRUNCATIONS:
            raise ValueError(f"truncation={truncation!r}: choose one of {TRUNCATIONS}.")
        texts = list(texts)
        room = max_len - tokenizer.num_special_tokens_to_add()
        if room < 1:
            raise DataError(
                f"max_len={max_len} leaves no room for text after the {max_len - room} special tokens: give at least "
                f"{max_len - room + 1}."
            )
        ids = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        check_vocabulary(tokenizer, ids, texts)
        self.truncated = np.array([len(i) > room for i in ids], dtype=bool)
        if self.truncated.any():
            log.info(
                "%d of %d texts are longer than max_len=%d tokens and were cut (truncation=%s).",
                self.truncated.sum(),
                len(texts),
                max_len,
                truncation,
            )
            if truncation == "head+tail":
                texts = [_head_and_tail(tokenizer, t, room) if cut else t for t, cut in zip(texts, self.truncated)]
        enc = tokenizer(texts, truncation=True, max_length=max_len)
        self.items = [{k: enc[k][i] for k in enc} | {"idx": i} for i in range(len(texts))]
        if labels is not None:
            for item, y in zip(self.items, labels):
                item["labels"] = int(y)
        self.lengths = [len(item["input_ids"]) for item in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]

    def subset(self, index: Sequence[int]) -> Encoded:
        """The texts at ``index``, renumbered 0..len-1 (``evaluate`` returns rows in this order)."""
        out = copy.copy(self)
        out.items = [self.items[i] | {"idx": j} for j, i in enumerate(index)]
        out.lengths = [self.lengths[i] for i in index]
        out.truncated = self.truncated[list(index)]
        return out

    def with_labels(self, labels: Sequence[int]) -> Encoded:
        """The same texts with these labels (e.g. pseudo-labels of pool texts).

        Args:
            labels: one label id per text.
        """
        if len(labels) != len(self.items):
            raise ValueError(f"{len(labels)} labels for {len(self.items)} texts")
        out = copy.copy(self)
        out.items = [item | {"labels": int(y)} for item, y in zip(self.items, labels)]
        return out

    def join(self, other: Encoded) -> Encoded:
        """These texts followed by ``other``'s, renumbered 0..len-1 (both labelled, for training).

        Args:
            other: texts encoded by the same tokenizer.
        """
        out = copy.copy(self)
        out.items = self.items + [item | {"idx": len(self.items) + j} for j, item in enumerate(other.items)]
        out.lengths = self.lengths + other.lengths
        out.truncated = np.concatenate([self.truncated, other.truncated])
        return out


def tokenize_texts(
    source: str,
    texts: Sequence[str],
    max_len: int,
    labels: Sequence[int] | None = None,
    truncation: str = "head",
) -> tuple[PreTrainedTokenizerBase, Encoded]:
    """The encoder's tokenizer, with ``max_len`` checked against the model's positions, and the texts encoded by it.

    Args:
        source: the encoder (local folder or hub id, resolved).
        texts: the texts.
        max_len: the most tokens per text.
        labels: label ids, one per text (None for unlabelled texts).
        truncation: ``"head"`` or ``"head+tail"``.
    """
    tokenizer = load_tokenizer(source)
    check_max_len(max_len, source, tokenizer)
    return tokenizer, Encoded(tokenizer, texts, max_len, labels, truncation=truncation)


def _head_and_tail(tokenizer: PreTrainedTokenizerBase, text: str, room: int) -> str:
    """The text of its first ``room / 2`` (rounded up) and its last ``room / 2`` tokens, joined by a space."""
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    head, tail = (room + 1) // 2, room // 2
    return (text[: offsets[head - 1][1]] if head > 0 else "") + " " + (text[offsets[-tail][0] :] if tail > 0 else "")


def train_loader(ds: Encoded, collator: DataCollatorWithPadding, batch_size: int, seed: int) -> DataLoader:
    """Shuffled batches of similar length (less padding), padded per batch.

    Args:
        ds: the encoded training texts.
        collator: pads each batch (:func:`make_collator`).
        batch_size: texts per batch.
        seed: seed of the shuffling.
    """
    sampler = LengthGroupedSampler(batch_size, lengths=ds.lengths, generator=torch.Generator().manual_seed(seed))
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, collate_fn=collator)


def eval_loader(ds: Encoded, collator: DataCollatorWithPadding, batch_size: int) -> DataLoader:
    """Batches in length order (least padding); ``evaluate`` restores the original order.

    Args:
        ds: the encoded texts.
        collator: pads each batch (:func:`make_collator`).
        batch_size: texts per batch.
    """
    order = np.argsort(ds.lengths, kind="stable").tolist()
    return DataLoader(ds, batch_size=batch_size, sampler=order, collate_fn=collator)


def make_collator(tokenizer: PreTrainedTokenizerBase, accelerator: Accelerator) -> DataCollatorWithPadding:
    """Dynamic padding (to a multiple of 8 on GPU for tensor cores); returns the attention mask.

    Args:
        tokenizer: the model's tokenizer.
        accelerator: decides the padding multiple by its device.
    """
    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if accelerator.device.type == "cuda" else None)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, loader: DataLoader, accelerator: Accelerator, desc: str | None = None
) -> np.ndarray:
    """Logits for every example of ``loader``, in dataset order (gathered across processes).

    Args:
        model: the model (prepared by ``accelerator``).
        loader: batches from :func:`eval_loader` (or :func:`train_loader`), with ``idx``.
        accelerator: devices and gathering across processes.
        desc: the progress bar's label (None: no progress bar).
    """
    model.eval()
    idx_all, logits_all = [], []
    for batch in tqdm(loader, desc=desc, disable=desc is None or not accelerator.is_local_main_process, leave=False):
        idx = batch.pop("idx")
        batch.pop("labels", None)
        logits = model(**batch).logits.float()
        idx, logits = accelerator.gather_for_metrics((idx, logits))
        idx_all.append(idx.cpu())
        logits_all.append(logits.cpu())
    idx, logits = torch.cat(idx_all).numpy(), torch.cat(logits_all).numpy()
    out = np.empty_like(logits)
    out[idx] = logits
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, numerically stable.

    Args:
        logits: one row of logits per example.
    """
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


# --- training -----------------------------------------------------------------------------------------


def per_device_batch(batch_size: int, processes: int, grad_accum: int) -> int:
    """Texts per device and forward pass, so that one optimizer step sees exactly ``batch_size`` texts.

    Args:
        batch_size: texts per optimizer step, over all processes and accumulation steps.
        processes: number of processes (devices).
        grad_accum: micro-batches per optimizer step.

    Raises:
        ValueError: ``batch_size`` is not a multiple of ``processes`` × ``grad_accum``.
    """
    share = processes * grad_accum
    if batch_size % share:
        raise ValueError(
            f"batch_size {batch_size} is not a multiple of processes × grad_accum ({processes} × "
            f"{grad_accum} = {share}): the global batch would not be {batch_size}. Choose a batch_size "
            f"divisible by {share}."
        )
    return batch_size // share


@dataclass
class TrainSettings:
    """How each fold's model is fine-tuned (03_bert_cv's parameters of the same names)."""

    epochs: int = setting(4, "training epochs per fold (the best on the validation part is kept)", ge=1)
    batch_size: int = setting(32, "texts per optimizer step, over all GPUs and accumulation steps", ge=1)
    lr: float = setting(2e-5, "peak learning rate (AdamW, linear warm-up and decay)", gt=0)
    head_lr: float | None = setting(None, "learning rate of the new classification head (None: lr)", gt=0)
    freeze_embeddings: bool = setting(False, "keep the input word embeddings fixed (much faster on CPU)")
    warmup_ratio: float = setting(0.1, "share of the steps spent warming up the learning rate", ge=0, lt=1)
    weight_decay: float = setting(0.01, "AdamW weight decay (not on biases and LayerNorm)", ge=0)
    max_grad_norm: float = setting(1.0, "gradients clipped to this norm", gt=0)
    grad_accum: int = runtime(1, "micro-batches per optimizer step (same effective batch, less memory)", ge=1)


def param_groups(
    model: torch.nn.Module, weight_decay: float, new: set[str] = frozenset(), head_lr: float | None = None
) -> list[dict]:
    """AdamW groups: weight decay on weight matrices, none on biases and LayerNorm weights (1-d tensors);
    parameters named in ``new`` get ``head_lr`` when it is given.

    Args:
        model: the model.
        weight_decay: weight decay of the weight matrices.
        new: names of the parameters the checkpoint did not have.
        head_lr: learning rate of the ``new`` parameters (None: the optimizer's).
    """
    groups = []
    for is_new in (False, True):
        for decayed in (True, False):
            params = [
                p
                for n, p in model.named_parameters()
                if p.requires_grad and (p.ndim >= 2) == decayed and (head_lr is not None and n in new) == is_new
            ]
            if params:
                groups.append(
                    {"params": params, "weight_decay": weight_decay if decayed else 0.0}
                    | ({"lr": head_lr} if is_new else {})
                )
    return groups


def make_optimizer(
    model: torch.nn.Module, settings: TrainSettings, new: set[str] = frozenset(), fused: bool = True
) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over :func:`param_groups`; fused: one kernel updates every parameter (CPU and CUDA).

    Args:
        model: the model (trainable parameters only are optimised).
        settings: ``lr``, ``head_lr`` and ``weight_decay``.
        new: names of the parameters the checkpoint did not have (they get ``head_lr``).
        fused: the fused implementation (False: PyTorch's per-tensor loop; for fp16 loss scaling, and comparison).
    """
    return torch.optim.AdamW(
        param_groups(model, settings.weight_decay, new, settings.head_lr), lr=settings.lr, fused=fused
    )


@dataclass
class FoldResult:
    test_probs: np.ndarray | None
    history: pd.DataFrame
    best_epoch: int
    model: PreTrainedModel  # unwrapped, holding the best epoch's weights
    encoder_checksum: float
    val_logits: np.ndarray | None = None  # the kept epoch's logits on the validation texts (for calibration)


def clip_and_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    accelerator: Accelerator,
    max_grad_norm: float,
) -> None:
    """One optimizer step: clip the gradients' norm, step, advance the schedule (unless fp16 skipped the step), zero.

    Args:
        model: the model (prepared by ``accelerator``).
        optimizer: its optimizer.
        scheduler: the learning-rate schedule, stepped once per optimizer step.
        accelerator: devices, mixed precision and the fp16 loss scaler.
        max_grad_norm: gradients are clipped to this norm.
    """
    accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    if not accelerator.optimizer_step_was_skipped:  # fp16: the scaler skips steps with inf/NaN gradients
        scheduler.step()
    optimizer.zero_grad()


def train_epoch(
    model: torch.nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    accelerator: Accelerator,
    settings: TrainSettings,
    desc: str = "",
) -> float:
    """One pass over the training batches: forward with the attention mask, backward, clip, step; the mean loss.

    Args:
        model: the model (prepared by ``accelerator``).
        loader: batches of token ids, attention masks and labels (each padded to its own longest text).
        optimizer: AdamW over :func:`param_groups`.
        scheduler: the learning-rate schedule, stepped once per optimizer step.
        accelerator: devices, mixed precision and gradient synchronisation.
        settings: ``grad_accum`` (micro-batches per step) and ``max_grad_norm``.
        desc: the progress bar's label.
    """
    model.train()
    loss_sum, seen = torch.zeros((), device=accelerator.device), 0  # summed on the device: no sync per step
    for step, batch in enumerate(tqdm(loader, desc=desc, disable=not accelerator.is_local_main_process, leave=False)):
        batch.pop("idx")
        last_micro = (step + 1) % settings.grad_accum == 0 or step + 1 == len(loader)
        with accelerator.no_sync(model) if not last_micro else contextlib.nullcontext():
            loss = model(**batch).loss  # input_ids, attention_mask and labels: padding is masked out
            accelerator.backward(loss / settings.grad_accum)
        if last_micro:
            clip_and_step(model, optimizer, scheduler, accelerator, settings.max_grad_norm)
        loss_sum, seen = loss_sum + loss.detach().float() * len(batch["labels"]), seen + len(batch["labels"])
    return accelerator.reduce(loss_sum / seen, "mean").item()


@dataclass
class FineTuning:
    """One model ready to fine-tune (:func:`prepare`): the model, optimizer, schedule and batches, all prepared by
    ``accelerator``, with the settings the schedule was made for."""

    model: torch.nn.Module  # prepared by the accelerator (wrapped for mixed precision or DDP)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_dl: DataLoader
    val_dl: DataLoader | None
    test_dl: DataLoader | None
    val_labels: np.ndarray | None  # gold label ids of the validation texts, in their order
    settings: TrainSettings
    accelerator: Accelerator
    encoder_checksum: float  # of the pretrained weights it starts from (:func:`encoder_checksum`)

    def summary(self) -> pd.Series:
        """The optimizer, its parameter groups and the schedule, in words and numbers (for a methods section)."""
        s, optimizer = self.settings, getattr(self.optimizer, "optimizer", self.optimizer)  # accelerate's wrapper
        per_epoch, warmup, total = schedule_steps(len(self.train_dl), s)
        groups = [
            f"{sum(p.numel() for p in g['params']):,} weights at lr {g['initial_lr']:g}, weight decay {g['weight_decay']:g}"
            for g in self.optimizer.param_groups
        ]
        return pd.Series(
            {
                "optimizer": f"{type(optimizer).__name__}: " + "; ".join(groups),
                "schedule": f"linear warm-up over {warmup} steps, then linear decay to 0 at step {total}",
                "texts per optimizer step": s.batch_size,
                "optimizer steps per epoch": per_epoch,
                "epochs": s.epochs,
                "gradient norm clipped to": s.max_grad_norm,
                "training texts": len(self.train_dl.dataset),
                "validation texts": 0 if self.val_dl is None else len(self.val_dl.dataset),
                "test texts": 0 if self.test_dl is None else len(self.test_dl.dataset),
                "mixed precision": self.accelerator.mixed_precision,
                "processes": self.accelerator.num_processes,
            },
            name="fine-tuning",
        )


def schedule_steps(batches: int, settings: TrainSettings) -> tuple[int, int, int]:
    """Optimizer steps per epoch, warm-up steps and all steps of a run with ``batches`` training batches per epoch
    (per process).

    Args:
        batches: training batches per epoch and process.
        settings: ``grad_accum``, ``warmup_ratio`` and ``epochs``.
    """
    per_epoch = math.ceil(batches / settings.grad_accum)
    total = per_epoch * settings.epochs
    return per_epoch, int(settings.warmup_ratio * total), total


def prepare(
    source: str,
    label_names: Sequence[str],
    train: Encoded,
    val: Encoded | None,
    test: Encoded | None,
    settings: TrainSettings,
    accelerator: Accelerator,
    tokenizer: PreTrainedTokenizerBase,
    seed: int,
) -> FineTuning:
    """A fresh copy of ``source`` with a new classification head, its optimizer, batches and learning-rate schedule.

    Seeded with ``seed`` (the head's initialisation and the batch order). Give each model a fresh ``accelerator``
    when it has fp16 loss scaling: the scaler's state lives in the accelerator.

    Args:
        source: the pretrained encoder (local folder or hub id); a new classification head is added.
        label_names: the class names (their number sizes the head).
        train: the tokenized training texts with labels.
        val: the validation texts that choose the epoch, or None.
        test: the texts to predict once at the end, or None.
        settings: epochs, batch size, learning rates, warm-up, weight decay, clipping, frozen embeddings.
        accelerator: devices and mixed precision.
        tokenizer: pads the batches.
        seed: seeds the head's initialisation and the batch order.
    """
    per_device = per_device_batch(settings.batch_size, accelerator.num_processes, settings.grad_accum)
    # an earlier model (another fold, a failed try) must be gone before this one loads: accelerate's mixed-precision
    # forward wrapper keeps each in a reference cycle, so collect (call this where no frame or traceback holds one)
    gc.collect()
    torch.cuda.empty_cache()
    set_seed(seed)
    model, new = load_classifier_and_new(source, label_names)
    checksum = encoder_checksum(model, new)
    if settings.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    collator = make_collator(tokenizer, accelerator)
    # fp16's loss scaler hands inf/NaN steps to a fused optimizer instead of skipping them, and accelerate would
    # then step the schedule on them: per-tensor AdamW there
    optimizer = make_optimizer(model, settings, new, fused=accelerator.scaler is None)
    loaders = [train_loader(train, collator, per_device, seed)]
    loaders += [eval_loader(ds, collator, 2 * per_device) for ds in (val, test) if ds is not None]
    model, optimizer, *loaders = accelerator.prepare(model, optimizer, *loaders)
    train_dl = loaders[0]
    val_dl = loaders[1] if val is not None else None
    test_dl = loaders[-1] if test is not None else None
    _, warmup, total = schedule_steps(len(train_dl), settings)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, total)  # linear warm-up, then linear decay to 0
    val_labels = np.array([item["labels"] for item in val.items]) if val is not None else None
    return FineTuning(
        model, optimizer, scheduler, train_dl, val_dl, test_dl, val_labels, settings, accelerator, checksum
    )


@dataclass
class Fitted:
    """What :func:`fit_epochs` found: the per-epoch curves, the epoch kept, and its logits on the validation texts."""

    history: pd.DataFrame
    best_epoch: int
    val_logits: np.ndarray | None  # None without validation texts


def fit_epochs(ft: FineTuning, select_on: SelectOn, desc: str = "") -> Fitted:
    """Train every epoch; after each, score the validation texts and copy the weights when the score improves
    (:func:`nblib.metrics.improves`); at the end put the best epoch's weights back. Without validation texts the
    last epoch is kept.

    Args:
        ft: the model, optimizer, schedule and batches from :func:`prepare`.
        select_on: the validation score that decides the epoch kept.
        desc: a label for progress bars and log lines.
    """
    model, accelerator, epochs = ft.model, ft.accelerator, ft.settings.epochs
    best, best_state, best_epoch, best_logits, rows = None, None, epochs, None, []
    for epoch in range(1, epochs + 1):
        loss = train_epoch(
            model, ft.train_dl, ft.optimizer, ft.scheduler, accelerator, ft.settings, f"{desc} epoch {epoch}"
        )
        row = {"epoch": epoch, "train_loss": loss}
        if ft.val_dl is not None:
            logits = evaluate(model, ft.val_dl, accelerator)
            scores = validation_scores(ft.val_labels, softmax(logits))
            row |= scores
            if improves(scores, best, select_on):  # keep a copy of this epoch's weights, off the GPU
                best, best_epoch, best_logits = scores, epoch, logits
                best_state = {
                    k: v.detach().to("cpu", copy=True) for k, v in accelerator.unwrap_model(model).state_dict().items()
                }
            log.info(
                "%s epoch %d: train loss %.4f, val loss %.4f, val macro-F1 %.4f",
                desc,
                epoch,
                loss,
                row["val_loss"],
                row["val_macro_f1"],
            )
        rows.append(row)
    if best_state is not None:
        accelerator.unwrap_model(model).load_state_dict(best_state)  # the best epoch's weights, back in the model
    return Fitted(pd.DataFrame(rows), best_epoch, best_logits)


def predict_test(ft: FineTuning) -> np.ndarray | None:
    """Class probabilities of the test texts, in their order, by the model as it is now (after :func:`fit_epochs`:
    the kept epoch's weights); None without test texts.

    Args:
        ft: the fine-tuned model and its batches.
    """
    return softmax(evaluate(ft.model, ft.test_dl, ft.accelerator)) if ft.test_dl is not None else None


def fold_result(ft: FineTuning, fitted: Fitted, test_probs: np.ndarray | None) -> FoldResult:
    """The steps' results as one :class:`FoldResult` (the model unwrapped); the accelerator lets go of the model,
    optimizer and batches, so that the next model's memory is free once this one's result is dropped.

    Args:
        ft: the fine-tuned model (from :func:`prepare`, after :func:`fit_epochs`).
        fitted: what :func:`fit_epochs` returned.
        test_probs: what :func:`predict_test` returned.
    """
    plain = ft.accelerator.unwrap_model(ft.model)
    ft.accelerator.free_memory()
    return FoldResult(test_probs, fitted.history, fitted.best_epoch, plain, ft.encoder_checksum, fitted.val_logits)


def fine_tune(
    source: str,
    label_names: Sequence[str],
    train: Encoded,
    val: Encoded | None,
    test: Encoded | None,
    settings: TrainSettings,
    accelerator: Accelerator,
    tokenizer: PreTrainedTokenizerBase,
    seed: int,
    select_on: SelectOn,
    desc: str = "",
) -> FoldResult:
    """Fine-tune a fresh copy of ``source`` on ``train``; keep the epoch with the best validation score.

    The steps in order: :func:`prepare`, :func:`fit_epochs`, :func:`predict_test` (``test`` is predicted once, with
    the kept weights, after training), :func:`fold_result`. Without ``val`` (the final model on all data) the last
    epoch is kept. Seeded with ``seed`` (the same call gives the same model). Give each model a fresh
    ``accelerator`` when it has fp16 loss scaling: the scaler's state lives in the accelerator.

    Args:
        source: the pretrained encoder (local folder or hub id); a new classification head is added.
        label_names: the class names (their number sizes the head).
        train: the tokenized training texts with labels.
        val: the validation texts that choose the epoch, or None.
        test: the texts to predict once at the end, or None.
        settings: epochs, batch size, learning rates, warm-up, weight decay, clipping, frozen embeddings.
        accelerator: devices and mixed precision.
        tokenizer: pads the batches.
        seed: seeds the head's initialisation and the batch order.
        select_on: the validation score that decides the epoch kept (:func:`nblib.metrics.improves`).
        desc: a label for progress bars and log lines.
    """
    ft = prepare(source, label_names, train, val, test, settings, accelerator, tokenizer, seed)
    fitted = fit_epochs(ft, select_on, desc)
    return fold_result(ft, fitted, predict_test(ft))


def show_batch(batch: dict, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], tokens: int = 12) -> pd.DataFrame:
    """One batch as the model sees it: each row's text, its first tokens and ids, and its attention mask.

    Args:
        batch: a batch from :func:`train_loader` whose ``idx`` holds rows of ``texts``.
        tokenizer: the tokenizer that made it.
        texts: the texts the rows come from.
        tokens: how many positions of each row to show.
    """
    rows = []
    for i, idx in enumerate(batch["idx"].tolist()):
        ids, mask = batch["input_ids"][i].tolist(), batch["attention_mask"][i].tolist()
        rows.append(
            {
                "text": texts[idx],
                "label": int(batch["labels"][i]),
                "length": int(sum(mask)),
                "tokens": " ".join(tokenizer.convert_ids_to_tokens(ids[:tokens])),
                "input_ids": " ".join(map(str, ids[:tokens])),
                "attention_mask": "".join(map(str, mask)),
            }
        )
    return pd.DataFrame(rows)


def save_checkpoint(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path) -> Path:
    """``save_pretrained`` (safetensors) of model, tokenizer and label names: reloads anywhere with Auto* classes.

    Args:
        model: the fine-tuned model.
        tokenizer: its tokenizer.
        out_dir: the folder to write.
    """
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
