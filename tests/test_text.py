"""Real text: the default corpus, a user's file and its errors, windows of the token stream."""

import itertools
from pathlib import Path

import pytest
import torch

from sdpalab.models.text import (
    DEFAULT_TEXT,
    default_text,
    load_text,
    read_text,
    text_windows,
    token_stream,
    window_starts,
)


class CharTokenizer:
    """One token per character: enough to check streams and windows without a model."""

    def __call__(self, text, add_special_tokens=True, return_attention_mask=True):
        ids = [ord(c) % 1000 for c in text]
        return {"input_ids": ([1] if add_special_tokens else []) + ids}


def test_the_default_corpus_is_pydoc_topics_in_a_stable_order():
    from pydoc_data.topics import topics

    corpus = load_text()
    assert corpus.source == DEFAULT_TEXT and corpus == default_text()
    assert len(corpus.text) > 300_000  # about half a megabyte of prose
    first = topics[min(topics)].strip()
    assert corpus.text.startswith(first)
    assert len(corpus.sha256) == 16


def test_a_users_file_is_read_as_utf8(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("Caches hold keys — and values.\n", encoding="utf-8")
    corpus = load_text(path)
    assert corpus.source == str(path) and corpus.text.startswith("Caches")
    assert corpus.sha256 != default_text().sha256


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda d: d / "missing.txt", "does not exist"),
        (lambda d: d, "is not a file"),
        (lambda d: _write(d / "empty.txt", b"  \n\t\n"), "is empty"),
        (lambda d: _write(d / "latin1.txt", "café".encode("latin-1")), "is not UTF-8"),
    ],
)
def test_a_bad_file_is_one_line_naming_the_path_and_the_problem(tmp_path, make, problem):
    path = make(tmp_path)
    with pytest.raises(ValueError) as err:
        read_text(path)
    message = str(err.value)
    assert problem in message and str(path) in message and "\n" not in message


def test_an_unreadable_file_is_one_line(tmp_path, monkeypatch):
    path = _write(tmp_path / "locked.txt", b"text")

    def denied(self, *args, **kwargs):  # chmod 000 does not stop root, who runs CI here
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(ValueError, match="cannot be read: Permission denied"):
        read_text(path)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_windows_do_not_overlap_and_span_the_stream():
    for n, length, count in [(100, 10, 10), (1000, 64, 4), (1001, 100, 3), (50, 50, 1)]:
        starts = window_starts(n, length, count)
        assert starts[0] == 0 and len(starts) == count
        assert starts[-1] + length == n or count == 1
        assert all(b - a >= length for a, b in itertools.pairwise(starts))
        assert starts == window_starts(n, length, count)  # deterministic


def test_a_text_too_short_for_the_windows_names_it():
    with pytest.raises(ValueError, match=r"'x.txt' is too short: 99 tokens.*need 100"):
        window_starts(99, 25, 4, source="'x.txt'")


def test_token_stream_adds_no_special_tokens_and_windows_cut_it():
    corpus = load_text()
    stream = token_stream(CharTokenizer(), corpus)
    assert stream.dtype == torch.long and len(stream) == len(corpus.text)
    ids, n = text_windows(CharTokenizer(), corpus, 32, 3)
    assert ids.shape == (3, 32) and n == len(stream)
    assert torch.equal(ids[0], stream[:32]) and torch.equal(ids[-1], stream[-32:])
