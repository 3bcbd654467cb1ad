"""Splitting Chinese text into units: characters or jieba words."""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Iterable
from typing import Literal

import jieba

jieba.setLogLevel(logging.WARNING)

Unit = Literal["char", "word"]


def is_content(token: str) -> bool:
    """True unless the token is only whitespace or punctuation (emoji and symbols count as content).

    Args:
        token: one token.
    """
    return any(not (c.isspace() or unicodedata.category(c).startswith("P")) for c in token)


def tokenize(text: str, unit: Unit = "char") -> list[str]:
    """Split one text into characters or jieba words, dropping whitespace-only tokens.

    Args:
        text: one text.
        unit: ``"char"`` or ``"word"`` (anything else raises ``ValueError``).
    """
    if unit == "char":
        return [c for c in text if not c.isspace()]
    if unit == "word":
        return [w for w in jieba.lcut(text) if w.strip()]
    raise ValueError(f"unit must be 'char' or 'word', not {unit!r}")


def tokenize_all(texts: Iterable[str], unit: Unit = "char") -> list[list[str]]:
    """Tokenize many texts.

    Args:
        texts: the texts.
        unit: ``"char"`` or ``"word"``, as in :func:`tokenize`.

    Returns:
        The tokens of each text.
    """
    return [tokenize(t, unit) for t in texts]
