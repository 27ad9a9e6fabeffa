"""Real text to score a model on: the default corpus, a user's file, and windows of its tokens.

The default corpus is ``pydoc_data.topics``, the help topics that ship with every CPython (about
half a megabyte of English technical prose, 113k SmolLM2 tokens on Python 3.11), joined in sorted
topic order so that every machine with the same Python sees the same text. Windows are non-overlapping stretches of the token stream, spread
from its start to its end, so that several windows see different parts of the corpus.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

DEFAULT_TEXT = "pydoc_data.topics"


@dataclass(frozen=True)
class Corpus:
    """A corpus: where it came from, its text, and a short hash to tell two corpora apart."""

    source: str
    """``pydoc_data.topics`` or the path of the user's file."""
    text: str
    sha256: str
    """First 16 hex digits of the SHA-256 of the UTF-8 text."""


def _corpus(source: str, text: str) -> Corpus:
    return Corpus(source, text, hashlib.sha256(text.encode()).hexdigest()[:16])


def default_text() -> Corpus:
    """``pydoc_data.topics``: every topic's text, in sorted topic order, blank-line separated."""
    from pydoc_data.topics import topics

    return _corpus(DEFAULT_TEXT, "\n\n".join(topics[name].strip() for name in sorted(topics)))


def read_text(path: str | Path) -> Corpus:
    """A user's UTF-8 text file.

    Raises ``ValueError`` with one line naming the path and the problem: missing, not a file,
    unreadable, not UTF-8, or empty.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ValueError(f"text file {str(path)!r} does not exist")
    if not path.is_file():
        raise ValueError(f"text file {str(path)!r} is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"text file {str(path)!r} is not UTF-8 text (byte {err.start}: {err.reason})"
        ) from None
    except OSError as err:
        raise ValueError(f"text file {str(path)!r} cannot be read: {err.strerror}") from None
    if not text.strip():
        raise ValueError(f"text file {str(path)!r} is empty")
    return _corpus(str(path), text)


def load_text(path: str | Path | None = None) -> Corpus:
    """``path``'s text, or the default corpus when ``path`` is None."""
    return default_text() if path is None else read_text(path)


def token_stream(tokenizer: Any, text: Corpus) -> torch.Tensor:
    """The whole text as one stream of token ids ``[n_tokens]`` (int64), no special tokens
    added: windows cut from the middle of it must look like the middle of a document."""
    ids = tokenizer(text.text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def window_starts(n_tokens: int, length: int, count: int, *, source: str = "the text") -> list[int]:
    """Starts of ``count`` non-overlapping windows of ``length`` tokens in a stream of
    ``n_tokens``, the first at 0 and the last ending at the stream's end, evenly spaced between.

    Raises ``ValueError`` naming ``source`` when the stream is too short for them.
    """
    if count < 1 or length < 1:
        raise ValueError(f"windows need a positive count and length; got {count} x {length}")
    if n_tokens < count * length:
        raise ValueError(
            f"{source} is too short: {n_tokens} tokens, and {count} window(s) of {length} tokens "
            f"need {count * length}; give a longer text or fewer/shorter windows"
        )
    if count == 1:
        return [0]
    # Spacing (n - L) / (count - 1) >= L, so floors of its multiples never overlap.
    return [i * (n_tokens - length) // (count - 1) for i in range(count)]


def text_windows(tokenizer: Any, text: Corpus, length: int, count: int) -> tuple[torch.Tensor, int]:
    """``count`` windows of ``length`` tokens of ``text``: ``([count, length] ids, n_tokens)``,
    the second the length of the whole token stream."""
    stream = token_stream(tokenizer, text)
    starts = window_starts(len(stream), length, count, source=f"text {text.source!r}")
    return torch.stack([stream[s : s + length] for s in starts]), len(stream)
