"""The caption stage: what a job asks to know beside its audio, in the file's time.

- word times (`timestamps: word`): each chunk's words as the assemble stage aligned them, placed in
  the file (after trimming, crossfades and gaps) and scaled by the job's speed; a word the aligner
  could not place carries `aligned: false` and is counted;
- segment times (`timestamps: segment`): the segments' and chunks' places, with their text;
- subtitles (`subtitles: srt | vtt`): cues from the word times (from the chunks' times where words
  are not aligned: a language the aligner does not speak);
- chapters (`chapters: true`): the Podcasting 2.0 document in the metadata, and in an MP3 file its
  ID3 chapter frames.

Resampling to the file's rate does not move a time; a speed change divides every time by it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from tts_runner.captions import chapters as chapter_marks
from tts_runner.captions import subtitles
from tts_runner.captions.align import Word
from tts_runner.job.assemble import Span
from tts_runner.job.plan import Plan
from tts_runner.job.spec import Job


@dataclass
class Captioned:
    metadata: dict = field(default_factory=dict)           # fields added to the answer's metadata
    files: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # answer field -> (data, format)
    chapters: list[chapter_marks.Chapter] = field(default_factory=list)


def caption(job: Job, plan: Plan, spans: list[Span], words: list[list[list[Word]]] | None,
            duration: float) -> Captioned:
    asked = job.captions
    out = Captioned()
    speed = job.output.speed

    def at(t: float) -> float:
        return t if speed == 1.0 else round(t / speed, 3)

    texts = _chunk_texts(plan)
    timed: list[subtitles.Timed] = []
    if words is not None:
        entries = []
        for s, segment in enumerate(words):
            for c, chunk in enumerate(segment):
                for k, w in enumerate(chunk):
                    entry = {"word": w.word, "start": at(w.start), "end": at(w.end), "segment": s, "chunk": c}
                    if not w.aligned:
                        entry["aligned"] = False
                    entries.append(entry)
                    timed.append(subtitles.Timed(w.word, at(w.start), at(w.end), last_of_chunk=k == len(chunk) - 1))
        if asked.timestamps == "word":
            out.metadata["words"] = entries
            out.metadata["words_unaligned"] = sum(1 for e in entries if e.get("aligned") is False)
    elif asked.subtitles:
        timed = subtitles.from_chunks([(at(a), at(b), texts[s][c]) for s, (_, _, places) in enumerate(spans)
                                       for c, (a, b) in enumerate(places)])
    if asked.subtitles:
        out.files["subtitles"] = (subtitles.render(subtitles.cues(timed), asked.subtitles), asked.subtitles)
    if asked.chapters:
        out.chapters = chapter_marks.chapters([s.chapter for s in job.segments], [s.text for s in job.segments],
                                              [(at(a), at(b)) for a, b, _ in spans], duration)
        document = chapter_marks.document(out.chapters)
        out.metadata["chapters"] = document
        out.files["chapters"] = (json.dumps(document, indent=1).encode("utf-8"), "json")
    return out


def _chunk_texts(plan: Plan) -> list[list[str]]:
    texts: list[list[str]] = [[] for _ in range(plan.segments)]
    for chunk in sorted(plan.chunks, key=lambda c: (c.segment, c.position)):
        texts[chunk.segment].append(chunk.request.text)
    return texts


def with_texts(segments: list[dict], job: Job, plan: Plan) -> list[dict]:
    """The metadata's segments with each segment's and chunk's text (segment times)."""
    texts = _chunk_texts(plan)
    return [{**seg, "text": job.segments[i].text,
             "chunks": [{**c, "text": texts[i][k]} for k, c in enumerate(seg["chunks"])]}
            for i, seg in enumerate(segments)]
