"""Subtitles from a job's timed words: cues by sentence, at most 2 lines of at most 42 characters,
each shown at least 1 s and at most 7 s, written as SubRip (the `srt` package) or WebVTT (`webvtt-py`).

A cue is a run of words within one sentence (a word ending in . ! ? or the end of a chunk ends a
sentence) that fits 2 x 42 characters and 7 s; a longer sentence is split at the word where it would
go over. A cue lasts from its first word's start to its last word's end, held to at least 1 s
where the next cue leaves room, never overlapping it. Without word times (a language the aligner
does not speak), each chunk is one timed "word" run: its text, split the same way, shares the
chunk's measured time by characters.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass

LINE_CHARS = 42
LINES = 2
MIN_SECONDS = 1.0
MAX_SECONDS = 7.0
_SENTENCE_END = re.compile(r"[.!?…][\"'”’)\]]*$")


@dataclass(frozen=True)
class Timed:
    """A word (or, without word times, a piece of a chunk's text) and its time in the file."""

    text: str
    start: float
    end: float
    last_of_chunk: bool = False


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    lines: tuple[str, ...]


def wrap(words: list[str]) -> tuple[str, ...] | None:
    """The words on at most LINES lines of at most LINE_CHARS, the break where the lines are most
    even; None when they do not fit."""
    text = " ".join(words)
    if len(text) <= LINE_CHARS:
        return (text,)
    best = None
    for i in range(1, len(words)):
        first, second = " ".join(words[:i]), " ".join(words[i:])
        if len(first) <= LINE_CHARS and len(second) <= LINE_CHARS:
            score = abs(len(first) - len(second))
            if best is None or score < best[0]:
                best = (score, (first, second))
    return best[1] if best else None


def cues(words: list[Timed]) -> list[Cue]:
    """The subtitle cues of timed words, in order."""
    groups: list[list[Timed]] = []
    current: list[Timed] = []
    for word in words:
        trial = current + [word]
        too_long = current and (wrap([w.text for w in trial]) is None or word.end - current[0].start > MAX_SECONDS)
        if too_long:
            groups.append(current)
            trial = [word]
        current = trial
        if _SENTENCE_END.search(word.text) or word.last_of_chunk:
            groups.append(current)
            current = []
    if current:
        groups.append(current)
    made: list[Cue] = []
    for group in groups:
        lines = wrap([w.text for w in group]) or _hard_wrap(" ".join(w.text for w in group))
        made.append(Cue(group[0].start, max(group[-1].end, group[0].start), lines))
    return _paced(made)


def _hard_wrap(text: str) -> tuple[str, ...]:
    """One word longer than a line: cut into lines (a URL, a run of digits)."""
    return tuple(text[i:i + LINE_CHARS] for i in range(0, len(text), LINE_CHARS))[:LINES]


def _paced(made: list[Cue]) -> list[Cue]:
    """Each cue at least MIN_SECONDS long where the next one's start leaves room, at most MAX_SECONDS,
    never past the next cue's start."""
    out = []
    for i, cue in enumerate(made):
        limit = made[i + 1].start if i + 1 < len(made) else None
        end = max(cue.end, cue.start + MIN_SECONDS)
        end = min(end, cue.start + MAX_SECONDS)
        if limit is not None:
            end = min(end, limit)
        out.append(Cue(round(cue.start, 3), round(max(end, cue.start), 3), cue.lines))
    return out


def from_chunks(chunks: list[tuple[float, float, str]]) -> list[Timed]:
    """Timed pieces for subtitles without word times: each chunk's words share its time by characters
    (an estimate within a measured chunk; the chunk's bounds themselves are exact)."""
    out: list[Timed] = []
    for start, end, text in chunks:
        words = text.split()
        total = sum(len(w) + 1 for w in words) or 1
        at = start
        for k, word in enumerate(words):
            share = (end - start) * (len(word) + 1) / total
            out.append(Timed(word, round(at, 3), round(at + share, 3), last_of_chunk=k == len(words) - 1))
            at += share
    return out


def _delta(seconds: float) -> datetime.timedelta:
    return datetime.timedelta(milliseconds=round(seconds * 1000))


def _vtt_time(seconds: float) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def render(made: list[Cue], fmt: str) -> bytes:
    """The cues as an SRT or a WebVTT file (UTF-8)."""
    if fmt == "srt":
        import srt

        subtitles = [srt.Subtitle(index=i + 1, start=_delta(c.start), end=_delta(c.end), content="\n".join(c.lines))
                     for i, c in enumerate(made)]
        return srt.compose(subtitles).encode("utf-8")
    if fmt == "vtt":
        from webvtt import Caption, WebVTT

        vtt = WebVTT()
        for c in made:
            vtt.captions.append(Caption(_vtt_time(c.start), _vtt_time(c.end), list(c.lines)))
        return (vtt.content.rstrip("\n") + "\n").encode("utf-8")
    raise ValueError(f"unknown subtitle format {fmt!r}")
