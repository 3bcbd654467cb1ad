"""A large language model as a classifier of the study: prompts from the codebook, class probabilities, k-fold runs.

The prompt (:class:`Prompt`) is rendered from the codebook and an editable template (:data:`DEFAULT_TEMPLATE`,
Chinese by default). A backend scores texts: :class:`LocalBackend` (any Hugging Face causal LM) takes each class's
probability from the log-likelihood of the class's answer (its verbalization) after the prompt, normalised over the
classes — no free text to parse, no invalid answers; ``nblib.llm_api.ApiBackend`` asks an OpenAI-compatible server.
:func:`run_llm_folds` runs a backend on the study's folds (zero-shot, or k examples per class drawn from each fold's
training part) and saves the results like every other model, so 04 compares them and 05 can use them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from jinja2.exceptions import TemplateError
from tokenizers import Regex, Tokenizer, decoders
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Split
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    DynamicCache,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)

from .bert import (
    COPY_AGAIN,
    check_model_folder,
    load_pretrained,
    load_tokenizer,
    max_positions,
    resolve_model,
    softmax,
)
from .codebook import Codebook, entries_text, read_codebook
from .cv import FoldOutput, run_folds
from .files import write_atomic
from .hardware import gpu_precision
from .layout import TINY_RANDOM, ModelNotAvailableError
from .results import ModelResults
from .sheets import DataError

if TYPE_CHECKING:
    from .folds import FoldSplit
    from .study import Study

TEXT_SLOT = "{codebook}"  # where the template takes the codebook
LABELS_SLOT = "{labels}"  # where the template takes the answers allowed, e.g. "0、1、2、3"

# The instruction, Chinese by default: {codebook} becomes the labels with their descriptions, {labels} the answers.
DEFAULT_TEMPLATE = (
    "你是一名社会科学研究的编码员。请根据下面的编码手册，判断一条微博评论属于哪一个类别。\n\n"
    "编码手册：\n{codebook}\n\n"
    "只回答类别编号（{labels}之一），不要解释。"
)
DEFAULT_TEMPLATE_EN = (
    "You are a coder in a social-science study. Using the codebook below, decide which category a social-media "
    "comment belongs to.\n\nCodebook:\n{codebook}\n\n"
    "Answer with the category number only (one of {labels}), no explanation."
)
# Paraphrases of the instruction for prompt stability (Krippendorff's alpha across them); the first is the default.
PARAPHRASES = (
    DEFAULT_TEMPLATE,
    "请阅读以下编码手册，然后为这条评论选择最合适的类别。\n\n{codebook}\n\n请只输出类别编号（{labels}之一）。",
    "下面是一个内容分析任务。编码手册列出了各个类别及其说明：\n{codebook}\n\n"
    "请判断评论的类别，只写编号（{labels}中的一个）。",
    "作为研究助理，你需要按照编码手册对社交媒体评论进行归类。\n\n类别说明：\n{codebook}\n\n答案只能是{labels}中的一个编号。",
    "根据以下类别定义给评论分类。\n{codebook}\n\n输出一个类别编号（{labels}），不要输出其他内容。",
)
# The words a prompt's language uses around the codebook, the texts and the answer.
WORDS = {
    "zh": {
        "colon": "：",
        "stop": "。",
        "include": "包括",
        "exclude": "不包括",
        "examples": "例如",
        "quote": "「{}」",
        "sep": "；",
        "list": "、",
        "text": "评论：",
        "answer": "类别：",
    },
    "en": {
        "colon": ": ",
        "stop": ". ",
        "include": "Includes",
        "exclude": "Excludes",
        "examples": "Examples",
        "quote": '"{}"',
        "sep": "; ",
        "list": ", ",
        "text": "Comment: ",
        "answer": "Category: ",
    },
}
TEMPLATES = {"zh": DEFAULT_TEMPLATE, "en": DEFAULT_TEMPLATE_EN}
LOCAL = "local"  # the local backend's name in run records (nblib.llm_api.BACKEND: the API's)
PROMPT_FILE = "prompt.json"  # in an LLM run's folder: the template and the zero-shot prompt
BACKEND_FILE = "backend.json"  # in an LLM run's folder: the backend's settings (LocalBackend.settings)


@dataclass(frozen=True)
class Prompt:
    """Everything that decides what a model is asked for one text.

    ``instruction`` is the rendered template (codebook included); ``examples`` the few-shot examples as (text, class
    index); ``verbalizations`` the answer of each class; ``text_prefix`` what precedes a text in the user turn;
    ``answer_prefix`` what precedes the answer in a plain prompt (chat prompts answer in the assistant turn).
    """

    instruction: str
    examples: tuple[tuple[str, int], ...] = ()
    verbalizations: tuple[str, ...] = ()
    answer_prefix: str = WORDS["zh"]["answer"]
    text_prefix: str = WORDS["zh"]["text"]

    def messages(self, text: str) -> list[dict]:
        """The prompt for ``text`` as chat messages (OpenAI format): the instruction as the system turn, each example
        as a user turn and the assistant's answer, then ``text`` as the last user turn.

        Args:
            text: the text to classify.
        """
        turns = [{"role": "system", "content": self.instruction}]
        for example, label in self.examples:
            turns.append({"role": "user", "content": self.text_prefix + example})
            turns.append({"role": "assistant", "content": self.verbalizations[label]})
        turns.append({"role": "user", "content": self.text_prefix + text})
        return turns

    def plain(self, text: str) -> str:
        """The prompt for ``text`` as one string for a model without a chat template; the answer follows it.

        Args:
            text: the text to classify.
        """
        shots = "".join(
            f"{self.text_prefix}{example}\n{self.answer_prefix}{self.verbalizations[label]}\n\n"
            for example, label in self.examples
        )
        return f"{self.instruction}\n\n{shots}{self.text_prefix}{text}\n{self.answer_prefix}"

    def fingerprint(self) -> str:
        """sha256 of everything that decides the prompt (for caches and run identities)."""
        return hashlib.sha256(json.dumps(asdict(self), ensure_ascii=False, sort_keys=True).encode()).hexdigest()

    def with_examples(self, examples: Sequence[tuple[str, int]]) -> Prompt:
        """The same prompt with other few-shot examples.

        Args:
            examples: (text, class index) pairs.
        """
        return replace(self, examples=tuple((str(t), int(c)) for t, c in examples))


def render_prompt(
    codebook: Codebook,
    template: str | None = None,
    examples: Sequence[tuple[str, int]] = (),
    language: str = "zh",
    verbalizations: Sequence[str] | None = None,
) -> Prompt:
    """The prompt of a codebook: the template with the codebook and the allowed answers filled in.

    Args:
        codebook: the labels, in class order (:meth:`nblib.codebook.Codebook.for_data`).
        template: the instruction with the slots ``{codebook}`` and ``{labels}`` (default: :data:`DEFAULT_TEMPLATE`,
            or its English twin for ``language="en"``); other braces are kept as written.
        examples: few-shot examples as (text, class index).
        language: ``"zh"`` or ``"en"``: the words around the codebook, texts and answers.
        verbalizations: the answer of each class (default: its label as written in the sheet, e.g. "0").

    Raises:
        ValueError: an unknown language, a template without ``{codebook}``, or verbalizations that are not one
            distinct non-empty answer per class.
    """
    if language not in WORDS:
        raise ValueError(f"language={language!r}: choose one of {sorted(WORDS)}.")
    words = WORDS[language]
    template = TEMPLATES[language] if template is None else template
    if TEXT_SLOT not in template:
        raise ValueError(f"The prompt template has no {TEXT_SLOT} slot: the model would not see the codebook.")
    answers = tuple(str(v) for v in (codebook.labels if verbalizations is None else verbalizations))
    if len(answers) != len(codebook) or len(set(answers)) != len(answers) or not all(a.strip() for a in answers):
        raise ValueError(
            f"verbalizations {list(answers)}: give one distinct, non-empty answer for each of the {len(codebook)} "
            f"labels {codebook.names}."
        )
    instruction = template.replace(TEXT_SLOT, entries_text(codebook, words, answers)).replace(
        LABELS_SLOT, words["list"].join(answers)
    )
    examples = tuple((str(t), int(c)) for t, c in examples)
    bad = [c for _, c in examples if not 0 <= c < len(codebook)]
    if bad:
        raise ValueError(f"example class(es) {bad} out of range: the codebook has {len(codebook)} labels.")
    return Prompt(instruction, examples, answers, words["answer"], words["text"])


@dataclass
class Scores:
    """What a backend returns for a list of texts.

    ``probs``: one row per text, summing to 1 (NaN where a text could not be scored); ``invalid``: texts not scored;
    ``tokens_in``/``tokens_out``: prompt and answer tokens (a local backend counts every text's whole prompt, as an
    API bills it); ``requests``: API requests sent (0 for a local model); ``cost``: estimated cost (None: unknown).
    """

    probs: np.ndarray
    invalid: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    seconds: float = 0.0
    requests: int = 0
    cost: float | None = None


# --- the local backend: a Hugging Face causal LM ---------------------------------------------------------------

SENTINEL = "\ue000TEXT\ue000"  # stands for the text while the prompt is split into its shared prefix and the rest
CHAT_TEMPLATE = (  # the tiny model's (ChatML, as Qwen's)
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class PromptTooLongError(DataError):
    """The prompt with its examples, a text and an answer do not fit into the model's context."""


def check_causal_lm(source: str, config: PretrainedConfig | None = None) -> PretrainedConfig:
    """The config of ``source`` if it is a causal (decoder) language model; one clear message otherwise.

    Args:
        source: a local model folder or hub id (resolved by :func:`nblib.bert.resolve_model`).
        config: its config when already loaded.

    Raises:
        ModelNotAvailableError: the folder holds another kind of model (e.g. a BERT encoder).
    """
    if config is None:
        if Path(source).is_dir():
            check_model_folder(source)
        try:
            config = AutoConfig.from_pretrained(source)
        except (OSError, ValueError) as e:
            raise ModelNotAvailableError(f"The config of {source} cannot be read ({e}): {COPY_AGAIN}.") from None
    kind = config.model_type
    encoder = kind in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False)
    if kind not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or encoder or getattr(config, "is_encoder_decoder", False):
        raise ModelNotAvailableError(
            f"{source} holds a '{kind}' model ({', '.join(config.architectures or ['no architecture named'])}), not "
            f"a causal language model: the LLM classifier needs a decoder that writes text (e.g. Qwen2.5-0.5B-"
            f"Instruct, Llama, Gemma), loaded with AutoModelForCausalLM. Pass such a folder or hub id as llm_model; "
            f"encoders such as BERT belong in 03 (model=)."
        )
    return config


def local_device(device: str = "auto") -> torch.device:
    """``"auto"``: the first GPU when there is one, else the CPU; otherwise the device named.

    Args:
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``…
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def local_devices(device: str | Sequence[str] = "auto") -> list[torch.device]:
    """The devices a local model runs on: ``"auto"`` every visible GPU (else the CPU), ``"cuda"`` every GPU, one
    device by name, or each of a list.

    Args:
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``…, or a list of them.
    """
    if not isinstance(device, str):
        return [torch.device(d) for d in device]
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return [local_device(device)]


def local_dtype(device: torch.device, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """bf16 on a GPU that computes it (fp16 on older ones), fp32 on the CPU, unless ``dtype`` says otherwise.

    Args:
        device: where the model runs.
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"``, a torch dtype, or None (the default above).
    """
    if dtype is not None:
        return getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if device.type == "cuda":
        return torch.bfloat16 if gpu_precision(device) == "bf16" else torch.float16
    return torch.float32


class LocalBackend:
    """A Hugging Face causal LM that scores each class's answer after the prompt.

    The probability of class ``c`` for a text is the softmax over the classes of the summed log-probabilities of
    the tokens of its verbalization after the prompt. The part of the prompt every text shares (instruction and
    examples) is run once: its key/value cache is reused for every batch, so the cost grows with the texts' and
    the answers' tokens, not with the prompt's length times the texts.
    """

    def __init__(
        self,
        model: str,
        device: str | Sequence[str] = "auto",
        dtype: str | torch.dtype | None = None,
        batch_size: int = 16,
        chat: bool | None = None,
    ):
        """Load the model and its tokenizer.

        Args:
            model: a local model folder or a hub id (a causal LM).
            device: ``"auto"`` (every visible GPU, else the CPU), ``"cpu"``, ``"cuda"`` (every GPU), ``"cuda:0"``…,
                or a list of devices: with several, the texts are split into one shard per device, each scored by
                its own copy of the model at the same time.
            dtype: the weights' dtype (None: bf16 on GPU, fp32 on CPU).
            batch_size: texts scored per forward pass.
            chat: use the tokenizer's chat template (None: when it has one); False: the plain prompt.

        Raises:
            ModelNotAvailableError: the model cannot be had, or is not a causal LM.
        """
        self.source = resolve_model(model, pass_as=("LLM_MODEL", "llm_model"))
        self.name = Path(model).name if Path(model).expanduser().is_dir() else model
        self.config = check_causal_lm(self.source)
        self.tokenizer = load_tokenizer(self.source)
        devices = local_devices(device)
        self.device = devices[0]
        self.dtype = local_dtype(self.device, dtype)
        self.batch_size = batch_size
        self.chat = bool(self.tokenizer.chat_template) if chat is None else chat
        self.model = load_pretrained(AutoModelForCausalLM, self.source, dtype=self.dtype).to(self.device).eval()
        self.replicas = [self.model] + [copy.deepcopy(self.model).to(d) for d in devices[1:]]
        self.context = max_positions(self.config)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.tokenizer.eos_token_id or 0)

    DECISIVE = ("backend", "chat")  # settings a resumed run must keep (the model is in the run's name)

    def settings(self) -> dict:
        """What decides the answers, for the run record (``backend.json``) and for reopening the backend in 05
        (:func:`nblib.llm_backends.reopen_backend`): the model as loaded, chat template or not, the dtype."""
        return {
            "backend": LOCAL,
            "model": self.source,
            "chat": self.chat,
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    # -- turning a prompt into tokens --

    def render(self, prompt: Prompt, text: str) -> str:
        """The prompt for ``text`` as the model reads it (chat template applied when the backend uses one).

        Args:
            prompt: the prompt.
            text: the text to classify.
        """
        if not self.chat:
            return prompt.plain(text)
        messages = prompt.messages(text)
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except TemplateError:  # templates without a system turn (e.g. Mistral's): the instruction opens the first turn
            first = {"role": "user", "content": f"{messages[0]['content']}\n\n{messages[1]['content']}"}
            return self.tokenizer.apply_chat_template(
                [first, *messages[2:]], tokenize=False, add_generation_prompt=True
            )

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode(self, prompt: Prompt, texts: Sequence[str]) -> tuple[list[int], list[list[int]], list[list[int]]]:
        """The token ids of the shared prefix, of each text (with the rest of the prompt after it) and of each
        class's answer; ``prefix + text + answer`` is what the model reads for one text and class.

        Args:
            prompt: the prompt.
            texts: the texts.
        """
        rendered = self.render(prompt, SENTINEL)
        if rendered.count(SENTINEL) != 1:
            raise ValueError("The prompt template must show the text exactly once.")
        prefix, suffix = rendered.split(SENTINEL)
        prefix_ids = self._encode(prefix)
        bos = self.tokenizer.bos_token_id
        if not self.chat and bos is not None and prefix_ids[:1] != [bos]:
            prefix_ids = [bos, *prefix_ids]
        after = self._encode(suffix)
        answers = []
        for verbalization in prompt.verbalizations:
            together = self._encode(suffix + verbalization)  # the answer's tokens as they follow the prompt
            own = together[len(after) :] if together[: len(after)] == after else []
            answers.append(own or self._encode(verbalization))
        texts_ids = (
            self.tokenizer([str(t) + suffix for t in texts], add_special_tokens=False)["input_ids"]
            if len(texts)
            else []
        )
        return prefix_ids, texts_ids, answers

    def check_fits(self, prompt: Prompt, texts: Sequence[str]) -> None:
        """Refuse a prompt that, with the longest text and answer, does not fit into the model's context; the
        message gives the numbers and the largest k (examples per class) that fits.

        Args:
            prompt: the prompt.
            texts: the texts to be scored with it.

        Raises:
            PromptTooLongError: it does not fit.
        """
        self._check_fits(prompt, *self.encode(prompt, texts))

    def _check_fits(
        self, prompt: Prompt, prefix: list[int], text_ids: list[list[int]], answers: list[list[int]]
    ) -> None:
        """:meth:`check_fits` on the prompt's tokens."""
        if not self.context or not text_ids:
            return
        longest, answer = max(map(len, text_ids)), max(map(len, answers))
        need = len(prefix) + longest + answer
        if need <= self.context:
            return
        fits = [
            k
            for k in range(max_per_class(prompt.examples), -1, -1)
            if self._needs(prompt, k, longest, answer) <= self.context
        ]
        advice = (
            f"The largest k that fits is {fits[0]} example(s) per class: set k_shot={fits[0]}, or shorten the "
            f"examples or the template."
            if fits
            else "Even without examples it does not fit: shorten the template or the codebook, or use a model with "
            "a longer context."
        )
        raise PromptTooLongError(
            f"The prompt does not fit into {self.name}'s context of {self.context} tokens (max_position_embeddings): "
            f"instruction and {len(prompt.examples)} examples take {len(prefix)} tokens, the longest text "
            f"{longest} and the longest answer {answer}, {need} in all. {advice}"
        )

    def _needs(self, prompt: Prompt, k: int, longest: int, answer: int) -> int:
        """Tokens needed by ``prompt`` cut to its first ``k`` examples of each class, with the longest text and answer."""
        return len(self.encode(prompt.with_examples(first_per_class(prompt.examples, k)), [])[0]) + longest + answer

    # -- scoring --

    def score(self, prompt: Prompt, texts: Sequence[str], reuse_prefix: bool = True, progress: bool = False) -> Scores:
        """Class probabilities of ``texts`` (the log-likelihood of each answer after the prompt, normalised).

        Args:
            prompt: the prompt.
            texts: the texts to classify.
            reuse_prefix: run the shared prefix once and reuse its cache (False: the whole prompt for every text
                and class, the naive path, for checks and benchmarks).
            progress: show a progress bar.
        """
        start = time.perf_counter()
        prefix, text_ids, answers = tokens = self.encode(prompt, texts)
        loglik = self._log_likelihoods(prompt, *tokens, reuse_prefix, progress)
        return Scores(
            probs=softmax(loglik),
            tokens_in=len(texts) * len(prefix) + sum(map(len, text_ids)),
            tokens_out=len(texts) * sum(map(len, answers)),
            seconds=round(time.perf_counter() - start, 3),
        )

    @torch.inference_mode()
    def log_likelihoods(
        self, prompt: Prompt, texts: Sequence[str], reuse_prefix: bool = True, progress: bool = False
    ) -> np.ndarray:
        """Summed log-probability of each class's answer tokens after the prompt, one row per text.

        Args:
            prompt: the prompt.
            texts: the texts.
            reuse_prefix: see :meth:`score`.
            progress: show a progress bar.
        """
        return self._log_likelihoods(prompt, *self.encode(prompt, texts), reuse_prefix, progress)

    @torch.inference_mode()
    def _log_likelihoods(
        self,
        prompt: Prompt,
        prefix: list[int],
        text_ids: list[list[int]],
        answers: list[list[int]],
        reuse_prefix: bool,
        progress: bool,
    ) -> np.ndarray:
        """:meth:`log_likelihoods` on the prompt's tokens."""
        self._check_fits(prompt, prefix, text_ids, answers)
        bar = tqdm(total=len(text_ids), desc=f"{self.name}: scoring", disable=not progress, unit="text")
        shards = np.array_split(np.arange(len(text_ids)), len(self.replicas))
        jobs = [
            (model, [text_ids[i] for i in shard])
            for model, shard in zip(self.replicas, shards, strict=True)
            if len(shard)
        ]
        if len(jobs) == 1:
            parts = [self._shard(jobs[0][0], prefix, jobs[0][1], answers, reuse_prefix, bar)]
        else:  # one thread per device: PyTorch releases the GIL while each GPU computes
            with ThreadPoolExecutor(len(jobs)) as pool:
                parts = list(pool.map(lambda j: self._shard(j[0], prefix, j[1], answers, reuse_prefix, bar), jobs))
        bar.close()
        return np.concatenate(parts) if parts else np.empty((0, len(answers)))

    @torch.inference_mode()
    def _shard(
        self,
        model: PreTrainedModel,
        prefix: list[int],
        text_ids: list[list[int]],
        answers: list[list[int]],
        reuse_prefix: bool,
        bar: tqdm,
    ) -> np.ndarray:
        """The answers' log-likelihoods of some texts, batch by batch, with one copy of the model."""
        out = np.empty((len(text_ids), len(answers)))
        cache = self._prefix_cache(model, prefix) if reuse_prefix else None
        # a sliding-window layer's cache keeps the last tokens by slot, padding included: batch equal lengths there
        sliding = cache is not None and any(cache.is_sliding)
        for rows in batches([len(t) for t in text_ids], self.batch_size, same_length=sliding):
            batch = [text_ids[i] for i in rows]
            if reuse_prefix:
                out[rows] = self._batch_cached(model, cache, len(prefix), batch, answers)
            else:
                out[rows] = self._batch_naive(model, prefix, batch, answers)
            bar.update(len(batch))
        return out

    @staticmethod
    def _prefix_cache(model: PreTrainedModel, prefix: list[int]) -> DynamicCache:
        ids = torch.tensor([prefix], device=model.device)
        return model(input_ids=ids, use_cache=True, logits_to_keep=1).cache

    def _batch_cached(
        self,
        model: PreTrainedModel,
        prefix_cache: DynamicCache,
        n_prefix: int,
        texts: list[list[int]],
        answers: list[list[int]],
    ) -> np.ndarray:
        """One batch: the texts after a copy of the prefix cache (left-padded, so each text ends where the answers
        start), then every (text, answer) pair's answer tokens after the texts' cache."""
        b, c = len(texts), len(answers)
        ids, mask = _padded(texts, self.pad_id, left=True, device=model.device)
        positions = n_prefix + (mask.cumsum(1) - 1).clamp(min=0)
        cache = copy.deepcopy(prefix_cache)
        cache.batch_repeat_interleave(b)
        attention = torch.cat([torch.ones(b, n_prefix, dtype=mask.dtype, device=model.device), mask], 1)
        first = model(input_ids=ids, attention_mask=attention, position_ids=positions, cache=cache, logits_to_keep=1)
        first_logp = torch.log_softmax(first.logits[:, -1].float(), -1)
        total = first_logp[:, [a[0] for a in answers]]  # (b, c): each answer's first token
        longest = max(map(len, answers))
        if longest == 1:
            return total.cpu().numpy()
        # the answers' remaining tokens: b × c rows, text-major (the cache repeats each text c times)
        cache = first.cache
        cache.batch_repeat_interleave(c)
        ans, ans_mask = _padded(answers, self.pad_id, left=False, device=model.device)
        rows_in, rows_mask = ans[:, :-1].repeat(b, 1), ans_mask[:, :-1].repeat(b, 1)
        attention = torch.cat([attention.repeat_interleave(c, 0), rows_mask], 1)
        ends = (n_prefix + mask.sum(1)).repeat_interleave(c)
        positions = ends[:, None] + torch.arange(longest - 1, device=model.device)
        rest = model(input_ids=rows_in, attention_mask=attention, position_ids=positions, cache=cache)
        logp = torch.log_softmax(rest.logits.float(), -1)
        target, target_mask = ans[:, 1:].repeat(b, 1), ans_mask[:, 1:].repeat(b, 1)
        picked = logp.gather(-1, target[..., None])[..., 0] * target_mask
        return (total + picked.sum(1).view(b, c)).cpu().numpy()

    def _batch_naive(
        self, model: PreTrainedModel, prefix: list[int], texts: list[list[int]], answers: list[list[int]]
    ) -> np.ndarray:
        """One batch the naive way: the whole prompt, text and answer for every (text, class) pair."""
        rows = [prefix + t + a for t in texts for a in answers]
        ids, mask = _padded(rows, self.pad_id, left=True, device=model.device)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        longest = max(map(len, answers))
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=longest + 1)
        logp = torch.log_softmax(out.logits[:, :-1].float(), -1)  # position j predicts the token at j + 1
        ans, ans_mask = _padded([a for _ in texts for a in answers], self.pad_id, left=True, device=model.device)
        picked = logp.gather(-1, ans[..., None])[..., 0] * ans_mask
        return picked.sum(1).view(len(texts), len(answers)).cpu().numpy()


def batches(lengths: Sequence[int], size: int, same_length: bool = False) -> list[np.ndarray]:
    """Batches of at most ``size`` texts (their indices): in order, or, with ``same_length``, texts of one token
    length each (shortest first), so that no batch needs padding.

    Args:
        lengths: each text's tokens.
        size: the most texts per batch.
        same_length: batch only texts of equal length.
    """
    if not same_length:
        return [np.arange(s, min(s + size, len(lengths))) for s in range(0, len(lengths), size)]
    order = np.argsort(np.asarray(lengths), kind="stable")
    groups = np.split(order, np.flatnonzero(np.diff(np.asarray(lengths)[order])) + 1) if len(order) else []
    return [g[s : s + size] for g in groups for s in range(0, len(g), size)]


def _padded(
    rows: Sequence[Sequence[int]], pad: int, left: bool, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows padded to one length (on the left or the right) and their attention mask."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, span], mask[i, span] = torch.tensor(r, dtype=torch.long), 1
    return ids.to(device), mask.to(device)


def max_per_class(examples: Sequence[tuple[str, int]]) -> int:
    """The most examples any class has in ``examples``.

    Args:
        examples: (text, class index) pairs.
    """
    counts = np.bincount([c for _, c in examples]) if len(examples) else np.zeros(1, int)
    return int(counts.max())


def first_per_class(examples: Sequence[tuple[str, int]], k: int) -> list[tuple[str, int]]:
    """The first ``k`` examples of each class, in their order.

    Args:
        examples: (text, class index) pairs.
        k: examples kept per class.
    """
    seen: dict[int, int] = {}
    kept = []
    for text, c in examples:
        seen[c] = seen.get(c, 0) + 1
        if seen[c] <= k:
            kept.append((text, c))
    return kept


def build_tiny_causal_lm(
    texts: Sequence[str],
    out_dir: str | Path,
    seed: int = 0,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    context: int = 4096,
    extra_text: str = "",
) -> Path:
    """A randomly initialised Llama causal LM (small by default) with a character vocabulary and a ChatML chat
    template, saved as a normal model folder (config, weights, tokenizer).

    For tests, smoke runs and the demo where no real LLM is available; its labels say nothing about LLMs. The
    vocabulary holds the characters of ``texts``, of the shipped templates and paraphrases, of ``extra_text``
    (e.g. the codebook and the verbalizations) and ASCII.

    Args:
        texts: the texts whose characters make the vocabulary.
        out_dir: where to save the model and tokenizer.
        seed: seed of the random initialisation.
        hidden: hidden size.
        layers: number of transformer layers.
        heads: attention heads per layer (key/value heads: half of them).
        context: the context length in tokens (max_position_embeddings).
        extra_text: more text whose characters go into the vocabulary.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shipped = "".join(PARAPHRASES) + DEFAULT_TEMPLATE_EN + "".join(v for w in WORDS.values() for v in w.values())
    chars = sorted(
        set("".join(texts) + shipped + extra_text + "".join(map(chr, range(32, 127))) + "\n\t") - {SENTINEL[0]}
    )
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials + chars)}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out_dir)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=context,
        pad_token_id=vocab["<|endoftext|>"],
        eos_token_id=vocab["<|im_end|>"],
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(out_dir)
    return out_dir


# --- the LLM as a model of the study ------------------------------------------------------------------------------


class _Backend(Protocol):
    """What :func:`run_llm_folds` needs of a backend (:class:`LocalBackend`, ``nblib.llm_api.ApiBackend``): a name
    and ``score(prompt, texts) -> Scores``."""

    name: str
    DECISIVE: tuple[str, ...]  # the keys of settings() a resumed run must keep

    def score(self, prompt: Prompt, texts: Sequence[str]) -> Scores:
        """Class probabilities of ``texts`` under ``prompt``."""
        ...

    def settings(self) -> dict:
        """What decides the answers (never a key), written as the run's ``backend.json``."""
        ...


def draw_examples(
    texts: Sequence[str], labels: np.ndarray, pool: np.ndarray, k: int, seed: int
) -> list[tuple[int, str, int]]:
    """``k`` examples of each class drawn from the texts at ``pool`` (e.g. a fold's training part), fixed by ``seed``,
    in a shuffled order (classes interleaved): (index, text, class).

    A class with fewer than ``k`` texts in the pool gives all it has.

    Args:
        texts: every labelled text.
        labels: their class indices.
        pool: the indices the examples may come from.
        k: examples per class (0: none).
        seed: seed of the draw.
    """
    rng = np.random.default_rng(seed)
    pool = np.asarray(pool)
    chosen = []
    for c in np.unique(labels):
        members = pool[labels[pool] == c]
        chosen += list(rng.choice(members, size=min(k, len(members)), replace=False)) if k else []
    chosen = [int(i) for i in rng.permutation(np.asarray(chosen, dtype=int))]
    return [(i, str(texts[i]), int(labels[i])) for i in chosen]


def run_name(backend: _Backend, k: int, prompt: Prompt) -> str:
    """The results folder name of an LLM run: ``llm_<model>_<k>shot_<prompt>`` (``/`` of a hub id becomes ``_``;
    ``<prompt>``: the first 8 hex digits of the zero-shot prompt's fingerprint), so an edited template or codebook
    gets a run of its own instead of clashing with the old one.

    Args:
        backend: the backend (its ``name``).
        k: examples per class (0: zero-shot).
        prompt: the prompt (its examples do not count).
    """
    return f"llm_{backend.name.replace('/', '_')}_{k}shot_{prompt.with_examples(()).fingerprint()[:8]}"


def run_llm_folds(
    study: Study,
    backend: _Backend,
    prompt: Prompt,
    k: int,
    template: str | None = None,
    name: str | None = None,
    which: Sequence[int] | None = None,
) -> ModelResults | None:
    """Zero-shot (``k`` = 0) or k-shot classification of every fold's test texts, saved as a model of the study.

    The "training" of fold ``f`` is the choice of its examples: ``k`` per class drawn from fold ``f``'s training
    part only (never its test texts), fixed by the study's seed and the fold. Each fold's prompt (examples with
    their sheet indices) is saved in ``prompts/fold_<f>.json`` of the run folder, the instruction in
    ``prompt.json``, the backend's settings (``backend.settings()``, never a key) in ``backend.json``, from which
    05 reopens the run (``nblib.labellers.open_llm_run``); the fold's metrics row gets the tokens, the scoring time, requests and cost. A fold with texts
    the backend could not score is not saved (:func:`scored_probs`).
    A finished fold is read back from the results, never scored again.

    Args:
        study: the study.
        backend: the local or API backend.
        prompt: the zero-shot prompt (its examples are replaced per fold).
        k: examples per class.
        template: the template the prompt was rendered from (saved with the run).
        name: the results folder name (default :func:`run_name`).
        which: the folds to run (default: every fold without results); a finished one among them is kept as it
            is, not scored again.

    Returns:
        The run's results when every fold is done (else None: the folds of ``which`` are saved).
    """
    prompt = prompt.with_examples(())
    config = {
        "llm": backend.name,
        "backend": type(backend).__name__,
        "prompt_sha": prompt.fingerprint(),
        "k_shot": k,
    }
    run = study.open_run(name or run_name(backend, k, prompt), config)
    texts, labels = np.asarray(study.data.texts, dtype=object), study.data.labels
    settings = json.loads(json.dumps(backend.settings()))
    check_same_backend(run.path / BACKEND_FILE, settings, backend.DECISIVE)
    record = {"template": template, **asdict(prompt)}
    write_atomic(run.path / PROMPT_FILE, lambda p: p.write_text(json.dumps(record, indent=2, ensure_ascii=False)))
    write_atomic(run.path / BACKEND_FILE, lambda p: p.write_text(json.dumps(settings, indent=2, ensure_ascii=False)))

    def fit_predict(split: FoldSplit) -> FoldOutput:
        drawn = draw_examples(texts, labels, np.concatenate([split.train, split.val]), k, split.seed)
        fold_prompt = prompt.with_examples([(t, c) for _, t, c in drawn])
        saved = {"fold": split.fold, "prompt_sha": fold_prompt.fingerprint(), "examples": drawn}
        folder = run.path / "prompts"
        folder.mkdir(exist_ok=True)
        write_atomic(
            folder / f"fold_{split.fold}.json", lambda p: p.write_text(json.dumps(saved, indent=2, ensure_ascii=False))
        )
        scores = backend.score(fold_prompt, list(texts[split.test]))
        return FoldOutput(scored_probs(scores, run.name, split.fold), extra=metrics_of(scores))

    pending = None if which is None else [k for k in which if not run.fold_done(k)]  # a finished fold is kept
    run_folds(study, run, fit_predict, val_fraction=0.1, which=pending)
    return None if run.pending_folds() else run.finish()


def check_same_backend(path: Path, settings: dict, keys: Sequence[str]) -> None:
    """Refuse to resume an LLM run with backend settings that change its answers (another server, temperature,
    chat template…): its folds would mix two settings, and 05 would label the pool with settings its error rates
    do not describe. A missing or unreadable ``backend.json`` is no objection (it is written afresh).

    Args:
        path: the run's ``backend.json``.
        settings: the backend's settings now.
        keys: the settings that change an answer (the backend's ``DECISIVE``).

    Raises:
        DataError: a setting of ``keys`` differs from the record.
    """
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    changed = {k: (recorded.get(k), settings.get(k)) for k in keys if recorded.get(k) != settings.get(k)}
    if changed:
        said = "; ".join(f"{k}: {old!r} recorded, {new!r} now" for k, (old, new) in changed.items())
        raise DataError(
            f"{path.parent.name} was scored with other backend settings ({said}), which change the answers. Go back "
            f"to the recorded settings to resume it, or move {path.parent} aside to score the run afresh with these."
        )


class UnscoredTextsError(DataError):
    """Texts of a fold got no valid answer from the backend, so the fold cannot be saved."""


def scored_probs(scores: Scores, run: str, fold: int) -> np.ndarray:
    """The fold's probabilities when every text got a valid answer; else one error counting those that did not.

    A text without a valid answer (an API answer that was no label, after the backend's retries) is never given a
    class: the fold is not saved, since every model of the study is compared on the same texts.

    Args:
        scores: what the backend returned for the fold's test texts.
        run: the run's name (for the message).
        fold: the fold (for the message).
    """
    unscored = int(np.isnan(scores.probs).any(axis=1).sum())
    if unscored:
        raise UnscoredTextsError(
            f"{run}, fold {fold}: {unscored} of {len(scores.probs)} texts got no valid answer (the backend's log "
            f"quotes them); the fold is not saved, since every model is compared on the same texts. Rerun to ask "
            f"again (ApiBackend(retry_invalid=True) asks for cached invalid answers too), or use a server that gives "
            f"logprobs, a stricter prompt, or another model."
        )
    return scores.probs


def metrics_of(scores: Scores) -> dict:
    """The cost columns of a fold's metrics row: tokens, scoring seconds, invalid answers, requests, cost.

    Args:
        scores: what the backend returned for the fold.
    """
    return {
        "texts": len(scores.probs),
        "tokens_in": scores.tokens_in,
        "tokens_out": scores.tokens_out,
        "scoring_seconds": scores.seconds,
        "invalid": scores.invalid,
        "requests": scores.requests,
        "cost": np.nan if scores.cost is None else scores.cost,
    }


def per_1000_texts(results: ModelResults) -> dict:
    """Scoring time (seconds), tokens and cost per 1,000 texts of a finished LLM run, from its metrics rows.

    Args:
        results: the run.
    """
    m = results.metrics
    n = m["texts"].sum()
    return {
        "seconds": 1000 * m["scoring_seconds"].sum() / n,
        "tokens_in": 1000 * m["tokens_in"].sum() / n,
        "tokens_out": 1000 * m["tokens_out"].sum() / n,
        "cost": 1000 * m["cost"].sum() / n if m["cost"].notna().all() else None,
    }


def final_prompt(study: Study, prompt: Prompt, k: int) -> Prompt:
    """The k-shot prompt for new texts (the pool): ``k`` examples per class from all labelled texts, fixed by the
    study's seed. ``backend.score(final_prompt(...), texts).probs`` labels any texts.

    Args:
        study: the study.
        prompt: the zero-shot prompt.
        k: examples per class.
    """
    data = study.data
    drawn = draw_examples(data.texts, data.labels, np.arange(len(data.texts)), k, study.settings.seed)
    return prompt.with_examples([(t, c) for _, t, c in drawn])


def stability_labels(
    backend: _Backend,
    codebook: Codebook,
    texts: Sequence[str],
    templates: Sequence[str] = PARAPHRASES,
    examples: Sequence[tuple[str, int]] = (),
    language: str = "zh",
    verbalizations: Sequence[str] | None = None,
) -> np.ndarray:
    """The label each paraphrase of the instruction gives each text: a texts × paraphrases matrix of class indices
    (NaN where a text was not scored), for Krippendorff's alpha across the paraphrases.

    Args:
        backend: the backend.
        codebook: the codebook.
        texts: the texts.
        templates: the paraphrases (default: :data:`PARAPHRASES`).
        examples: few-shot examples shared by every paraphrase.
        language: the prompt's language.
        verbalizations: each class's answer (default: its label).
    """
    columns = []
    for template in templates:
        prompt = render_prompt(codebook, template, examples, language, verbalizations)
        probs = backend.score(prompt, texts).probs
        columns.append(np.where(np.isnan(probs).any(axis=1), np.nan, np.nan_to_num(probs).argmax(axis=1)))
    return np.column_stack(columns)


# --- what notebook 07 opens -------------------------------------------------------------------------------------


def study_codebook(study: Study, codebook_path: str | None = None) -> Codebook:
    """The codebook of the study in its class order: ``codebook_path``'s, or the study's label table.

    Args:
        study: the study.
        codebook_path: a codebook file (:func:`nblib.codebook.read_codebook`), or None.
    """
    if codebook_path is None:
        return Codebook.from_study(study)
    return read_codebook(codebook_path).for_data(study.data, source=str(codebook_path))


def local_model(study: Study, model: str, codebook: Codebook | None = None) -> str:
    """The causal LM to load: ``model`` itself, or for ``tiny-random`` a random test model built from the study's
    texts (and the codebook's words) once, in ``<study>/llms/tiny-random``.

    Args:
        study: the study.
        model: a folder, hub id or ``tiny-random``.
        codebook: its words join the tiny model's vocabulary.
    """
    if model != TINY_RANDOM:
        return model
    folder = study.path / "llms" / TINY_RANDOM
    if not (folder / "config.json").exists():
        words = codebook.to_frame().astype(str).to_string() if codebook else ""
        build_tiny_causal_lm(study.data.texts, folder, seed=study.settings.seed, extra_text=words)
    return str(folder)
