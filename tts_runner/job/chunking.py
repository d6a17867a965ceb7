"""Sentence-aware splitting of text into chunks of about `max_chars` characters.

Rules, in order:
1. Split into sentences after . ! ? ; … and their CJK forms (。！？；), keeping the punctuation.
2. Pack whole sentences into chunks while they fit in `max_chars`.
3. A sentence longer than `max_chars` is split at clause punctuation (, : — and ，、：),
   then between words; CJK text, which has no spaces, may be split between characters.
4. Never inside a word: a single word longer than `max_chars` (a URL, say) stays whole, up to
   HARD_LIMIT_FACTOR * max_chars; a longer run of characters is not a word a voice can read, and
   is cut into `max_chars` pieces so that no chunk becomes an unbounded prompt.
"""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"(?<=[.!?;…])\s+|(?<=[。！？；])")
_CLAUSE_END = re.compile(r"(?<=[,:—])\s+|(?<=[，、：])")
# Scripts written without spaces between words: Han, kana, CJK punctuation and full-width forms.
# (Korean Hangul separates words with spaces and is treated like Latin text.)
_UNSPACED = "\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
# A word with its trailing spaces, or one unspaced character.
_WORD = re.compile(rf"[{_UNSPACED}]\s*|[^\s{_UNSPACED}]+\s*|\s+")
_UNSPACED_CHAR = re.compile(rf"[{_UNSPACED}]")
HARD_LIMIT_FACTOR = 2


def split_text(text: str, max_chars: int = 120) -> list[str]:
    """Chunks of `text`, in order, each stripped and non-empty."""
    if max_chars < 1:
        raise ValueError("max_chars must be positive")
    text = " ".join(text.split())
    pieces: list[str] = []
    for sentence in _split(_SENTENCE_END, text):
        if len(sentence) <= max_chars:
            pieces.append(sentence)
            continue
        for clause in _split(_CLAUSE_END, sentence):
            pieces.extend([clause] if len(clause) <= max_chars else _split_words(clause, max_chars))
    return _pack(pieces, max_chars)


def _split(pattern: re.Pattern, text: str) -> list[str]:
    return [p.strip() for p in pattern.split(text) if p and p.strip()]


def _split_words(text: str, max_chars: int) -> list[str]:
    out, current = [], ""
    for word in _words(text, max_chars):
        if current and len(current) + len(word.rstrip()) > max_chars:
            out.append(current.strip())
            current = ""
        current += word
    if current.strip():
        out.append(current.strip())
    return out


def _words(text: str, max_chars: int) -> list[str]:
    words = []
    for word in _WORD.findall(text):
        if len(word.rstrip()) > HARD_LIMIT_FACTOR * max_chars:
            words.extend(word[i:i + max_chars] for i in range(0, len(word), max_chars))
        else:
            words.append(word)
    return words


def _pack(pieces: list[str], max_chars: int) -> list[str]:
    chunks: list[str] = []
    for piece in pieces:
        if chunks and len(chunks[-1]) + _joiner_len(chunks[-1], piece) + len(piece) <= max_chars:
            chunks[-1] = chunks[-1] + (" " if _joiner_len(chunks[-1], piece) else "") + piece
        else:
            chunks.append(piece)
    return chunks


def _joiner_len(left: str, right: str) -> int:
    # Pieces of unspaced scripts are joined without a space.
    return 0 if _UNSPACED_CHAR.match(left[-1:]) or _UNSPACED_CHAR.match(right[:1]) else 1
