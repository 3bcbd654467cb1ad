"""A large language model as a classifier of the study: prompts from the codebook, class probabilities, k-fold runs.

The prompt (:class:`Prompt`) is rendered from the codebook and an editable template (:data:`DEFAULT_TEMPLATE`,
Chinese by default). A backend scores texts: :class:`LocalBackend` (any Hugging Face causal LM) takes each class's
probability from the log-likelihood of the class's answer (its verbalization) after the prompt, normalised over the
classes — no free text to parse, no invalid answers; ``nblib.llm_api.ApiBackend`` asks an OpenAI-compatible server.
:func:`run_llm_folds` runs a backend on the study's folds (zero-shot, or k examples per class drawn from each fold's
training part) and saves the results like every other model, so 04 compares them and 05 can use them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .codebook import Codebook, entries_text

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
        return Prompt(self.instruction, tuple((str(t), int(c)) for t, c in examples), *self._rest())

    def _rest(self) -> tuple:
        return self.verbalizations, self.answer_prefix, self.text_prefix


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
