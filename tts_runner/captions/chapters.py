"""Chapters of a job with segments: one per segment, or, when segments carry a "chapter" title, one
starting at each titled segment (untitled ones belong to the chapter before them). As a Podcasting
2.0 JSON chapters document, and in MP3 as ID3v2 chapter frames (CHAP per chapter and a top-level,
ordered CTOC, through mutagen).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

TITLE_CHARS = 60  # an untitled segment's chapter is named by the start of its text


@dataclass(frozen=True)
class Chapter:
    start: float
    end: float
    title: str


def chapters(titles: list[str | None], texts: list[str], bounds: list[tuple[float, float]],
             duration: float) -> list[Chapter]:
    """The chapters of segments with these optional titles, texts and (start, end) times in the file;
    the first chapter starts at 0 and each ends where the next starts (the last at `duration`)."""
    if any(titles):
        starts = [(i, t) for i, t in enumerate(titles) if t]
        if starts[0][0] != 0:  # what comes before the first title is a chapter of its own
            starts.insert(0, (0, _named(texts[0])))
    else:
        starts = [(i, _named(text)) for i, text in enumerate(texts)]
    made = []
    for k, (i, title) in enumerate(starts):
        start = 0.0 if k == 0 else bounds[i][0]
        end = bounds[starts[k + 1][0]][0] if k + 1 < len(starts) else duration
        made.append(Chapter(round(start, 3), round(max(end, start), 3), title.strip()))
    return made


def _named(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= TITLE_CHARS else text[:TITLE_CHARS].rsplit(" ", 1)[0] + "…"


def document(made: list[Chapter]) -> dict:
    """The Podcasting 2.0 JSON chapters document."""
    return {"version": "1.2.0", "chapters": [{"startTime": c.start, "endTime": c.end, "title": c.title}
                                             for c in made]}


def tag_mp3(data: bytes, made: list[Chapter]) -> bytes:
    """MP3 bytes with ID3v2 CHAP frames (one per chapter, its title in TIT2) and a CTOC listing them."""
    from mutagen.id3 import CHAP, CTOC, ID3, TIT2, CTOCFlags

    tags = ID3()
    ids = [f"chp{i}" for i in range(len(made))]
    for element, chapter in zip(ids, made, strict=True):
        tags.add(CHAP(element_id=element, start_time=round(chapter.start * 1000), end_time=round(chapter.end * 1000),
                      sub_frames=[TIT2(encoding=3, text=[chapter.title])]))
    tags.add(CTOC(element_id="toc", flags=CTOCFlags.TOP_LEVEL | CTOCFlags.ORDERED, child_element_ids=ids,
                  sub_frames=[TIT2(encoding=3, text=["Chapters"])]))
    buffer = io.BytesIO(data)
    tags.save(buffer, v2_version=3)
    return buffer.getvalue()
