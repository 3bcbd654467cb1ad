"""Task-adaptive pretraining (TAPT): more masked-language-model training of an encoder on the study's own texts.

Gururangan et al. (2020), "Don't Stop Pretraining": continuing the masked-language-model (MLM) objective on
the task's texts, labelled and unlabelled, before fine-tuning helps even a domain-adapted encoder. The MLM
reads texts only, never labels, and only texts of the study: the labelled sheet and the distinct pool
texts that are not labelled texts (:meth:`nblib.study.Study.unseen_pool`). The labelled texts include every
test fold's texts, as the pool's texts are included when the pool is labelled later; no label is seen.

Two maskings (``masking``):

- ``"char"``: tokens are chosen one by one (for Chinese BERT vocabularies a token is a character);
- ``"word"``: jieba words are chosen whole, all their tokens together: the whole-word masking the Chinese
  BERT-wwm models were trained with. (Hugging Face's whole-word collator finds words by the gaps between
  tokens, and Chinese has none, so the grouping is done here from jieba's word spans and the tokens' offsets.)

Either way ``mask_rate`` of each text's tokens (at least one) are predicted; of those, 80% are replaced by the
mask token, 10% by a random token and 10% kept, as in BERT. Special tokens are never chosen.

``adapt(config, study)`` writes ``<study>/encoders/<name>/``: the adapted encoder as the source model's class
(safetensors, with the source's pooler when it has one) and tokenizer, which ``03_bert_cv`` takes as its
``model``; ``mlm_head.safetensors`` (the MLM head, for fill-mask and further pretraining) and ``tapt.json``
(settings, loss curves, throughput). An interrupted run resumes from ``checkpoint/`` (saved every
``save_every`` steps); a finished one is reused; other settings under the same name are an error.

Training follows fine-tuning's rules: the device, precision, TF32 and emulated-bf16 rules, seeding and torchrun
launching of :mod:`nblib.hardware`, AdamW of :func:`nblib.bert.make_optimizer`, the linear warm-up and decay of
``get_linear_schedule_with_warmup`` and the clip/step of :func:`nblib.bert.clip_and_step`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import jieba
import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator, PartialState
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import (
    AutoModel,
    AutoModelForMaskedLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    get_linear_schedule_with_warmup,
)
from transformers import logging as hf_logging

from . import bert, hardware
from .environment import environment
from .files import write_atomic
from .hardware import Device, Hardware, Precision, Processes
from .layout import TAPT_DONE, same_source, stored_path
from .results import ResultsExistError
from .settings import MAX_LEN, StudySettings, from_params, identity, runtime, setting, to_params
from .study import Study, open_study
from .text import is_content

log = logging.getLogger(__name__)
Masking = Literal["char", "word"]
MASKINGS = ("char", "word")
HEAD_FILE = "mlm_head.safetensors"
INFO_FILE = TAPT_DONE  # written last: it marks the adapted encoder as completely saved


@dataclass
class TaptSettings:
    """How the encoder is adapted (06's parameters of the same names)."""

    masking: Masking = setting("word", "char: tokens one by one; word: jieba words whole (Chinese BERT-wwm)")
    mask_rate: float = setting(0.15, "share of each text's tokens predicted", gt=0, lt=1)
    tapt_epochs: int = setting(3, "passes over the labelled and pool texts", ge=1)
    tapt_lr: float = setting(1e-4, "peak learning rate of the masked-language-model training", gt=0)
    tapt_batch_size: int = setting(32, "texts per optimizer step, over all processes", ge=1)
    tapt_max_len: int = setting(MAX_LEN, "tokens per text; longer texts are cut", ge=1)
    tapt_warmup_ratio: float = setting(0.06, "share of the steps spent warming up the learning rate", ge=0, lt=1)
    tapt_freeze_embeddings: bool = setting(False, "keep the input word embeddings (and a head tied to them) fixed")
    tapt_name: str | None = runtime(None, "encoder folder under <study>/encoders (default tapt_<model folder>)")
    save_every: int = runtime(200, "optimizer steps between checkpoints of an unfinished TAPT run", ge=1)


@dataclass
class TaptConfig(Hardware):
    """Every setting of a TAPT run: the study, the encoder, how it is adapted, and the hardware."""

    study: StudySettings = runtime(default_factory=StudySettings)
    model: str = runtime("bert-base-chinese")  # the encoder to adapt: hub id, local folder, or tiny-random
    tapt: TaptSettings = field(default_factory=TaptSettings)
    precision: Precision = runtime("auto")
    device: Device = runtime("auto")
    num_processes: Processes = runtime("auto")  # auto: every visible GPU (1 on CPU); >1: DDP

    @property
    def name(self) -> str:
        """The encoder folder's name."""
        return self.tapt.tapt_name or f"tapt_{Path(self.model.rstrip('/')).name}"


# --- texts and masking -------------------------------------------------------------------------------


def mlm_texts(study: Study) -> tuple[list[str], dict]:
    """The texts TAPT reads: every labelled text, then the pool's distinct texts that are not labelled texts.

    Without a pool (``unlabelled_path`` None or empty) TAPT reads the labelled texts only, and says so.

    Args:
        study: the study.

    Returns:
        The texts, and their counts (``labelled``, ``pool``, ``pool_repeats_labelled``, ``pool_repeats_pool``).
    """
    pool = study.unseen_pool()
    if pool.texts.empty:
        log.warning(
            "No unlabelled pool texts (unlabelled_path=%s): TAPT reads the %d labelled texts only. Set "
            "unlabelled_path to a sheet of unlabelled comments to adapt on more text.",
            study.settings.unlabelled_path,
            len(study.data.texts),
        )
    texts = list(study.data.texts) + pool.texts["text"].tolist()
    counts = {
        "labelled": len(study.data.texts),
        "pool": len(pool.texts),
        "pool_repeats_labelled": pool.repeats_labelled,
        "pool_repeats_pool": pool.repeats_pool,
    }
    return texts, counts


def token_groups(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_len: int, masking: Masking
) -> list[dict]:
    """Tokenize texts for the MLM: token ids, and for every token the group it is masked with (-1: never).

    ``"char"``: every non-special token is its own group. ``"word"``: tokens that overlap the same jieba word are
    one group (a token spanning two words joins them). Special and unknown tokens are never chosen.

    Args:
        tokenizer: a fast tokenizer (offsets are needed for ``"word"``).
        texts: the texts.
        max_len: the most tokens per text.
        masking: ``"char"`` or ``"word"``.
    """
    if masking not in MASKINGS:
        raise ValueError(f"masking={masking!r}: choose one of {MASKINGS}.")
    if masking == "word" and not tokenizer.is_fast:
        raise ValueError("masking='word' needs a fast tokenizer (token offsets); use masking='char'.")
    enc = tokenizer(
        list(texts),
        truncation=True,
        max_length=max_len,
        return_special_tokens_mask=True,
        return_offsets_mapping=masking == "word",
    )
    plain = [[t for t, s in zip(ids, sm) if not s] for ids, sm in zip(enc["input_ids"], enc["special_tokens_mask"])]
    bert.check_vocabulary(tokenizer, plain, texts)
    items = []
    for i, text in enumerate(texts):
        unknown = [t == tokenizer.unk_token_id for t in enc["input_ids"][i]]  # nothing to learn from
        special = [int(s or u) for s, u in zip(enc["special_tokens_mask"][i], unknown)]
        if masking == "char":
            groups = [-1 if s else j for j, s in enumerate(special)]
        else:
            groups = _word_groups(text, enc["offset_mapping"][i], special)
        items.append({"input_ids": enc["input_ids"][i], "groups": groups})
    return items


def _word_groups(text: str, offsets: Sequence[tuple[int, int]], special: Sequence[int]) -> list[int]:
    """Group ids of tokens by jieba word: a token starts a new group unless it shares a word with the one before."""
    word_of = np.zeros(len(text), dtype=int)
    for w, (_, start, end) in enumerate(jieba.tokenize(text)):
        word_of[start:end] = w
    groups, group, last_word = [], -1, None
    for (start, end), s in zip(offsets, special):
        if s or end <= start:  # special tokens, and pieces that cover no character
            groups.append(-1)
            last_word = None
            continue
        words = word_of[start:end]
        if last_word is None or words[0] != last_word:
            group += 1
        groups.append(group)
        last_word = words[-1]
    return groups


def mask_tokens(
    input_ids: torch.Tensor,
    groups: torch.Tensor,
    mask_rate: float,
    mask_id: int,
    vocab_size: int,
    special_ids: Sequence[int],
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose groups to predict in every row, about ``mask_rate`` of its tokens (at least one group), and corrupt them.

    Groups are taken in random order while they fit the row's budget (``round(mask_rate × tokens)``, at least 1;
    BERT's rule, so whole words never overshoot); the chosen tokens become the labels, 80% of them are replaced
    by ``mask_id``, 10% by a random non-special token and 10% kept.

    Args:
        input_ids: token ids, one padded row per text.
        groups: the group of every token (-1: special or padding, never chosen).
        mask_rate: share of each row's tokens to predict.
        mask_id: the mask token's id.
        vocab_size: random replacements are drawn from ids below this.
        special_ids: ids never drawn as random replacements.
        rng: the random generator (seeded by the caller: same masks on a rerun).

    Returns:
        The corrupted ids, and the labels (-100 where nothing is predicted).
    """
    ids, g = input_ids.cpu().numpy().copy(), groups.cpu().numpy()
    chosen = np.zeros_like(ids, dtype=bool)
    for r in range(len(ids)):
        present = np.unique(g[r][g[r] >= 0])
        if not len(present):
            continue
        budget = max(1, round(mask_rate * int((g[r] >= 0).sum())))
        taken = 0
        for grp in rng.permutation(present):
            where = g[r] == grp
            size = int(where.sum())
            if taken and taken + size > budget:
                continue
            chosen[r] |= where
            taken += size
            if taken >= budget:
                break
    labels = np.where(chosen, ids, -100)
    u = rng.random(ids.shape)
    ids[chosen & (u < 0.8)] = mask_id
    randomised = chosen & (u >= 0.8) & (u < 0.9)
    allowed = np.setdiff1d(np.arange(vocab_size), np.asarray(list(special_ids)))
    ids[randomised] = rng.choice(allowed, size=int(randomised.sum()))
    return torch.from_numpy(ids), torch.from_numpy(labels)


class _Texts(torch.utils.data.Dataset):
    def __init__(self, items: list[dict]):
        self.items = items
        self.lengths = [len(it["input_ids"]) for it in items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def _collate(tokenizer: PreTrainedTokenizerBase, multiple: int | None):
    """Pad ids (with the attention mask) and groups (with -1) to the batch's longest text."""

    def collate(items: list[dict]) -> dict:
        batch = tokenizer.pad(
            [{"input_ids": it["input_ids"]} for it in items], return_tensors="pt", pad_to_multiple_of=multiple
        )
        width = batch["input_ids"].shape[1]
        batch["groups"] = torch.tensor([it["groups"] + [-1] * (width - len(it["groups"])) for it in items])
        return batch

    return collate


# --- the model ---------------------------------------------------------------------------------------


def load_mlm(source: str) -> tuple[PreTrainedModel, bool]:
    """The encoder with its masked-language-model head; a checkpoint without one gets a new head, and says so.

    Args:
        source: a local folder or hub id (resolved).

    Returns:
        The model, and whether its head is new.
    """
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = bert.load_pretrained(AutoModelForMaskedLM, source, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(level)
    head = Path(source) / HEAD_FILE
    if head.exists():  # an encoder adapted here: its head was saved next to it
        model.load_state_dict(load_file(str(head)), strict=False)
        return model, False
    prefix = model.base_model_prefix + "."
    new = [k for k in info["missing_keys"] if not k.startswith(prefix)]
    if new:
        log.warning(
            "%s has no masked-language-model head (it was saved as an encoder only, e.g. a sentence-embedding "
            "model): a new head is started (%d tensors) and trained with the encoder; the first steps mostly "
            "train the head, and its predictions before TAPT are random.",
            source,
            len(new),
        )
    return model, bool(new)


class MaskedLMLoss(torch.nn.Module):
    """An MLM model whose forward returns the mean cross-entropy over the masked tokens only.

    The vocabulary projection is applied to the masked positions alone (about 15% of tokens), not to every
    position as the model's own forward does: for large vocabularies (multilingual encoders: 250k pieces) that
    projection would otherwise cost more than the encoder. Models whose head is not one module fall back
    to their own forward.
    """

    def __init__(self, mlm: PreTrainedModel) -> None:
        """Wrap ``mlm``.

        Args:
            mlm: a masked-language model (an encoder with its MLM head).
        """
        super().__init__()
        self.mlm = mlm
        heads = [m for name, m in mlm.named_children() if name != mlm.base_model_prefix]
        self.head = heads[0] if len(heads) == 1 else None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The mean cross-entropy over the masked tokens.

        Args:
            input_ids: token ids of the batch (masked).
            attention_mask: 1 for real tokens, 0 for padding.
            labels: the original id at each masked position, -100 elsewhere.
        """
        if self.head is None:
            return self.mlm(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        hidden = self.mlm.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        picked = labels != -100
        if not picked.any():  # nothing to predict: a zero loss that keeps every parameter in the graph
            return hidden.sum() * 0.0
        logits = self.head(hidden[picked])
        return torch.nn.functional.cross_entropy(logits.float(), labels[picked])


def _head_state(mlm: PreTrainedModel) -> dict[str, torch.Tensor]:
    """The head's tensors, each stored once (tied ones are left to the tensor they share: loading one fills both;
    a decoder tied to the input embeddings is saved with the encoder), for ``mlm_head.safetensors``."""
    prefix = mlm.base_model_prefix + "."
    seen = {mlm.get_input_embeddings().weight.data_ptr()}
    out = {}
    for k, v in mlm.state_dict().items():
        if not k.startswith(prefix) and v.data_ptr() not in seen:
            seen.add(v.data_ptr())
            out[k] = v.detach().cpu().contiguous()
    return out


def save_encoder(mlm: PreTrainedModel, source: str, tokenizer: PreTrainedTokenizerBase, out_dir: Path) -> Path:
    """Save the adapted encoder as the source's own model class (its pooler kept when it has one), its tokenizer,
    and the MLM head in ``mlm_head.safetensors``.

    Args:
        mlm: the adapted MLM model.
        source: the encoder it started from (gives the class and the pooler).
        tokenizer: the tokenizer.
        out_dir: the folder.
    """
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        base = AutoModel.from_pretrained(source)
    finally:
        hf_logging.set_verbosity(level)
    missing = base.load_state_dict(mlm.base_model.state_dict(), strict=False).missing_keys
    if any("pooler" not in k for k in missing):
        raise RuntimeError(f"the adapted encoder does not fit {source}'s model class: missing {missing[:5]}")
    out_dir.mkdir(parents=True, exist_ok=True)
    base.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    save_file(_head_state(mlm), str(out_dir / HEAD_FILE))
    return out_dir


# --- training ----------------------------------------------------------------------------------------


@dataclass
class TaptResult:
    """A finished TAPT run: the encoder folder (a ``model`` for 03) and what ``tapt.json`` records."""

    path: Path
    info: dict

    @property
    def history(self) -> pd.DataFrame:
        """Training loss by step (``step``, ``epoch``, ``train_loss``: mean over the steps since the last row)."""
        return pd.DataFrame(self.info["history"])

    @property
    def probe(self) -> pd.DataFrame:
        """MLM loss on a fixed sample of texts with fixed masks, before TAPT (epoch 0) and after each epoch."""
        return pd.DataFrame(self.info["probe"])


def _identity(cfg: TaptConfig, source: str, texts: Sequence[str], study: Study) -> dict:
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    return {
        "source": stored_path(source, study.path),  # relative inside the study folder, which may move
        **identity(cfg),
        "seed": cfg.study.seed,
        "precision": cfg.resolved_precision(),
        "texts_sha": digest,
    }


def _probe_batches(ds: _Texts, collate, cfg: TaptConfig, tokenizer, n: int = 256) -> list[dict]:
    """A fixed sample of texts with fixed masks, batched: the same loss before and after every epoch."""
    rng = np.random.default_rng([cfg.study.seed, 7])
    pick = np.sort(rng.choice(len(ds), size=min(n, len(ds)), replace=False))
    out = []
    for start in range(0, len(pick), cfg.tapt.tapt_batch_size):
        batch = collate([ds[i] for i in pick[start : start + cfg.tapt.tapt_batch_size]])
        batch["input_ids"], batch["labels"] = _mask(batch, cfg, tokenizer, rng)
        out.append(batch)
    return out


def _mask(batch: dict, cfg: TaptConfig, tokenizer: PreTrainedTokenizerBase, rng: np.random.Generator):
    return mask_tokens(
        batch.pop("input_ids"),
        batch.pop("groups"),
        cfg.tapt.mask_rate,
        tokenizer.mask_token_id,
        len(tokenizer),
        tokenizer.all_special_ids,
        rng,
    )


@torch.no_grad()
def _probe_loss(model: torch.nn.Module, batches: list[dict], accelerator: Accelerator) -> float:
    model.eval()
    total, n = 0.0, 0
    for b in batches:
        k = int((b["labels"] != -100).sum())
        with accelerator.autocast():
            loss = model(**{key: v.to(accelerator.device) for key, v in b.items()})
        total, n = total + float(loss) * k, n + k
    return total / max(n, 1)


def _check_existing(folder: Path, ident: dict, study: Study) -> dict | None:
    """The finished run's info when ``folder`` holds one with these settings; an error when it holds other settings."""
    for f in (folder / INFO_FILE, folder / "checkpoint" / "identity.json"):
        if f.exists():
            old = json.loads(f.read_text())
            old = same_source(old.get("identity", old), ident, study.path)
            if old != ident:
                diff = {k: (old.get(k), ident.get(k)) for k in set(old) | set(ident) if old.get(k) != ident.get(k)}
                raise ResultsExistError(
                    f"{folder} holds a TAPT encoder with other settings {diff} (old, new). Set them back to "
                    f"resume or reuse it, or give this run another tapt_name."
                )
    info = folder / INFO_FILE
    return json.loads(info.read_text()) if info.exists() else None


def adapt(config: TaptConfig, study: Study, progress: bool = True) -> TaptResult:
    """Continue MLM training of ``config.model`` on the study's texts; the adapted encoder's folder and curves.

    A finished run with the same settings and texts is reused; an interrupted one resumes from its last
    checkpoint (same batches and masks as an uninterrupted run). With ``num_processes`` > 1 (GPUs), the
    processes train together under DistributedDataParallel (``torchrun``; the batch size stays global).

    Args:
        config: the settings.
        study: the study whose texts are read (labelled + pool).
        progress: show progress bars.
    """
    source = bert.model_source(config.model, study)
    texts, counts = mlm_texts(study)
    folder = (study.folder("encoders") / config.name).resolve()
    ident = _identity(config, source, texts, study)
    done = _check_existing(folder, ident, study)
    if done is None:
        if config.processes() > 1:
            worker = replace(config, model=source, tapt=replace(config.tapt, tapt_name=config.name))
            launch = hardware.write_launch_file(worker, folder / "launch.json")
            hardware.launch_torchrun("nblib.tapt", launch, config.processes(), folder / "tapt.log")
        else:
            _train(config, study, source, texts, counts, ident, folder, progress)
        done = json.loads((folder / INFO_FILE).read_text())
    return TaptResult(folder, done)


def _train(
    cfg: TaptConfig,
    study: Study,
    source: str,
    texts: list[str],
    counts: dict,
    ident: dict,
    folder: Path,
    progress: bool,
) -> None:
    hardware.keep_freed_memory()
    accelerator = hardware.make_accelerator(cfg)  # fine-tuning's precision, TF32 and emulated-bf16 rules
    precision = cfg.resolved_precision(accelerator.device)
    main = accelerator.is_main_process
    per_device = bert.per_device_batch(cfg.tapt.tapt_batch_size, accelerator.num_processes, 1)
    hardware.set_seed(cfg.study.seed)
    tokenizer = bert.load_tokenizer(source)
    mlm, new_head = load_mlm(source)
    bert.check_max_len(cfg.tapt.tapt_max_len, mlm.config, tokenizer, "tapt_max_len=")
    if cfg.tapt.tapt_freeze_embeddings:
        mlm.get_input_embeddings().weight.requires_grad_(False)
    model = MaskedLMLoss(mlm)
    ds = _Texts(token_groups(tokenizer, texts, cfg.tapt.tapt_max_len, cfg.tapt.masking))
    collate = _collate(tokenizer, 8 if accelerator.device.type == "cuda" else None)
    probe = _probe_batches(ds, collate, cfg, tokenizer)
    settings = bert.TrainSettings(lr=cfg.tapt.tapt_lr, weight_decay=0.01)
    optimizer = bert.make_optimizer(model, settings, fused=accelerator.scaler is None)
    steps_per_epoch = math.ceil(len(ds) / cfg.tapt.tapt_batch_size)
    total = steps_per_epoch * cfg.tapt.tapt_epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.tapt.tapt_warmup_ratio * total), total)
    # the schedule counts optimizer steps: not prepared (accelerate would step it once per process), but saved
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)

    ckpt = folder / "checkpoint"
    state = {"epoch": 1, "step": 0, "history": [], "probe": [], "seconds": 0.0, "processes": accelerator.num_processes}
    if (ckpt / "state.json").exists():
        saved = json.loads((ckpt / "state.json").read_text())
        if saved["processes"] != accelerator.num_processes:
            raise ValueError(
                f"{ckpt} was saved by {saved['processes']} process(es); resume it with num_processes="
                f"{saved['processes']} (the batches of a step depend on it), or delete the folder to start over."
            )
        accelerator.load_state(str(ckpt))
        state = saved
        log.info("%s: resuming TAPT at epoch %d, step %d", cfg.name, state["epoch"], state["step"])
    else:
        state["probe"].append({"epoch": 0, "probe_loss": _probe_loss(model, probe, accelerator)})
    log.info(
        "TAPT of %s on %d texts (%d labelled, %d pool), masking=%s, %d epochs, %s, %d process(es)",
        source,
        len(texts),
        counts["labelled"],
        counts["pool"],
        cfg.tapt.masking,
        cfg.tapt.tapt_epochs,
        precision,
        accelerator.num_processes,
    )
    log_every = max(1, steps_per_epoch // 20)
    start = time.perf_counter() - state["seconds"]
    for epoch in range(state["epoch"], cfg.tapt.tapt_epochs + 1):
        loader = accelerator.prepare(bert.train_loader(ds, collate, per_device, cfg.study.seed + epoch))
        skipped = state["step"]
        batches = accelerator.skip_first_batches(loader, skipped) if skipped else loader
        model.train()
        run_sum, run_n = 0.0, 0
        bar = tqdm(
            batches, desc=f"TAPT epoch {epoch}", disable=not (progress and main), initial=skipped, total=len(loader)
        )
        for step, batch in enumerate(bar, start=skipped + 1):
            # masks and dropout drawn from (seed, epoch, step, process): a resumed run repeats them exactly
            rng = np.random.default_rng([cfg.study.seed, epoch, step, accelerator.process_index])
            torch.manual_seed(int(rng.integers(2**31)))
            batch["input_ids"], batch["labels"] = _mask(batch, cfg, tokenizer, rng)
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            loss = model(**batch)
            accelerator.backward(loss)
            bert.clip_and_step(model, optimizer, scheduler, accelerator, max_grad_norm=1.0)
            run_sum, run_n = run_sum + loss.item(), run_n + 1
            if step % log_every == 0 or step == len(loader):
                loss_mean = accelerator.reduce(torch.tensor(run_sum / run_n, device=accelerator.device), "mean")
                state["history"].append(
                    {"step": (epoch - 1) * steps_per_epoch + step, "epoch": epoch, "train_loss": loss_mean.item()}
                )
                bar.set_postfix(loss=f"{loss_mean.item():.3f}")
                run_sum, run_n = 0.0, 0
            if step % cfg.tapt.save_every == 0 and step < len(loader):
                _checkpoint(accelerator, ckpt, state | {"epoch": epoch, "step": step}, ident, start)
        state["probe"].append({"epoch": epoch, "probe_loss": _probe_loss(model, probe, accelerator)})
        log.info("TAPT epoch %d: probe MLM loss %.4f", epoch, state["probe"][-1]["probe_loss"])
        state |= {"epoch": epoch + 1, "step": 0}
        if epoch < cfg.tapt.tapt_epochs:
            _checkpoint(accelerator, ckpt, state, ident, start)
    seconds = time.perf_counter() - start
    if main:
        save_encoder(accelerator.unwrap_model(model).mlm, source, tokenizer, folder)
        info = {
            "identity": ident,
            "settings": to_params(cfg),
            "texts": counts,
            "new_head": new_head,
            "history": state["history"],
            "probe": state["probe"],
            "seconds": round(seconds, 1),
            "texts_per_second": round(len(texts) * cfg.tapt.tapt_epochs / seconds, 1),
            "steps_per_epoch": steps_per_epoch,
            "environment": environment(),
        }
        write_atomic(folder / INFO_FILE, lambda p: p.write_text(json.dumps(info, indent=2, ensure_ascii=False)))
        shutil.rmtree(ckpt, ignore_errors=True)
        log.info("TAPT encoder saved to %s (%.0f s, %.1f texts/s)", folder, seconds, info["texts_per_second"])
    accelerator.wait_for_everyone()


def _checkpoint(accelerator: Accelerator, ckpt: Path, state: dict, ident: dict, start: float) -> None:
    """Save model, optimizer, schedule and RNG states and the position in the run into a new folder, then put it in
    place of the previous checkpoint: an interruption while saving leaves the previous one whole."""
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    accelerator.save_state(str(tmp), safe_serialization=False)
    if accelerator.is_main_process:
        (tmp / "identity.json").write_text(json.dumps(ident, indent=2, ensure_ascii=False))
        (tmp / "state.json").write_text(json.dumps(state | {"seconds": time.perf_counter() - start}))
        shutil.rmtree(ckpt, ignore_errors=True)
        tmp.rename(ckpt)
    accelerator.wait_for_everyone()


# --- what the model predicts ------------------------------------------------------------------------------


def masked_examples(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_len: int = MAX_LEN
) -> list[tuple[list[int], list[int], str, str]]:
    """One jieba word masked in each text (its longest content word): token ids, masked positions, the word, and
    the text with the word blanked out (texts without a content word are skipped).

    Args:
        tokenizer: the encoder's tokenizer (fast).
        texts: the texts.
        max_len: the most tokens per text.
    """
    out = []
    for text, item in zip(texts, token_groups(tokenizer, texts, max_len, "word")):
        ids, groups = item["input_ids"], np.array(item["groups"])
        offsets = tokenizer(text, truncation=True, max_length=max_len, return_offsets_mapping=True)["offset_mapping"]
        words = {
            g: text[offsets[where[0]][0] : offsets[where[-1]][1]]
            for g in np.unique(groups[groups >= 0])
            for where in [np.flatnonzero(groups == g)]
        }
        words = {g: w for g, w in words.items() if is_content(w)}
        if not words:
            continue
        best = max(words, key=lambda g: (len(words[g]), -g))  # the longest, the first of equals
        where = np.flatnonzero(groups == best).tolist()
        start, end = offsets[where[0]][0], offsets[where[-1]][1]
        masked = [tokenizer.mask_token_id if j in where else t for j, t in enumerate(ids)]
        out.append((masked, where, words[best], text[:start] + "[" + "＿" * (end - start) + "]" + text[end:]))
    return out


@torch.no_grad()
def fill_mask_table(
    sources: dict[str, str], texts: Sequence[str], top_k: int = 5, max_len: int = MAX_LEN
) -> pd.DataFrame:
    """For each text, its longest word masked and each model's ``top_k`` guesses for it (best first).

    A guess fills every masked position with that position's i-th best token.

    Args:
        sources: label → encoder folder or hub id (e.g. ``{"before": model, "after": tapt.path}``).
        texts: the texts.
        top_k: guesses per model.
        max_len: the most tokens per text.
    """
    first = next(iter(sources.values()))
    tokenizer = bert.load_tokenizer(first)
    examples = masked_examples(tokenizer, texts, max_len)
    rows = [{"masked text": shown, "word": word} for _, _, word, shown in examples]
    for label, source in sources.items():
        mlm, _ = load_mlm(source)
        mlm.eval()
        for row, (ids, where, _, _) in zip(rows, examples):
            logits = mlm(input_ids=torch.tensor([ids])).logits[0, where]
            top = logits.topk(top_k, dim=-1).indices.T  # (top_k, positions)
            row[label] = " | ".join(tokenizer.decode(t).replace(" ", "") for t in top.tolist())
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    """Worker entry point under torchrun: ``python -m nblib.tapt --config launch.json``.

    Args:
        argv: the command-line arguments (default: ``sys.argv[1:]``).
    """
    ap = argparse.ArgumentParser(description="Task-adaptive pretraining of an encoder on a study's texts.")
    ap.add_argument("--config", required=True, type=Path, help="a launch.json written by nblib.tapt.adapt")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = from_params(TaptConfig, json.loads(args.config.read_text()))
    PartialState(cpu=cfg.use_cpu())
    study = open_study(cfg.study)
    texts, counts = mlm_texts(study)
    folder = study.folder("encoders") / cfg.name
    _train(cfg, study, cfg.model, texts, counts, _identity(cfg, cfg.model, texts, study), folder, progress=True)


if __name__ == "__main__":
    main()
