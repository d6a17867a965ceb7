"""A whole job, stage by stage: plan -> generate (with check) -> assemble -> encode -> deliver, and
its description. Each segment is assembled on a worker thread as soon as its last chunk is made,
while the model goes on with the others. A streamed job goes through tts_runner/job/stream.py instead.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

from tqdm import tqdm

from tts_runner.captions import chapters as chapter_marks
from tts_runner.job import describe
from tts_runner.job.assemble import Assembler
from tts_runner.job.caption import caption, with_texts
from tts_runner.job.deliver import File, deliver, deliver_beside, encode
from tts_runner.job.design import design_voices
from tts_runner.job.events import Events
from tts_runner.job.generate import Stats, generate
from tts_runner.job.plan import plan
from tts_runner.job.spec import Job
from tts_runner.serving.model import Model
from tts_runner.serving.ticket import Ticket

READ_CHARS_PER_SECOND = 15  # read speech, for the progress bar's expected total


@dataclass
class JobAudio:
    file: File
    metadata: dict
    stats: Stats
    files: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # beside the audio: subtitles, chapters

    @property
    def data(self) -> bytes:
        return self.file.data

    @property
    def duration_seconds(self) -> float:
        return self.file.duration_seconds


def synthesize(job: Job, model: Model, progress=None, ticket: Ticket | None = None) -> JobAudio:
    """Make one job's file on `model`: the encoded audio, its metadata and what it took. With a
    scheduler (fast and graph engines) the job's chunks share rows with other jobs; `ticket` lets
    the caller cancel it; `progress(done, total, seconds)` hears how far it is."""
    started = time.perf_counter()
    chunks = plan(job, model, design_voices(job, model, ticket))
    model = chunks.model  # a designed voice's chunks run on the Base model that clones it
    expected = round(job.text_length / READ_CHARS_PER_SECOND)
    assembler = Assembler(chunks, job)
    # on a terminal only (disable=None): a worker's log gets one line per job instead
    with tqdm(total=max(1, expected), desc="audio", unit="s", mininterval=1.0, leave=False, disable=None,
              bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total} s made {postfix}") as bar:
        def report(done: int, total: int, seconds: float) -> None:
            if seconds > bar.total:  # the text's estimate was short
                bar.total = math.ceil(seconds)
            bar.set_postfix_str(f"({done}/{total} chunk{'s' * (total != 1)})", refresh=False)
            bar.update(seconds - bar.n)
            if progress:
                progress(done, total, seconds)

        try:
            stats = generate(model, chunks, job, Events(progress=report, result=assembler.add), ticket)
        except BaseException:
            assembler.close()
            raise
    samples, spans = assembler.finish()
    file = encode(samples, job)
    captioned = caption(job, chunks, spans, assembler.words(spans), file.duration_seconds)
    if captioned.chapters and file.format == "mp3":
        file = replace(file, data=chapter_marks.tag_mp3(file.data, captioned.chapters))
    metadata = describe.metadata(job, chunks, stats, spans, duration=file.duration_seconds,
                                 sample_rate=file.sample_rate, fmt=file.format, seconds=time.perf_counter() - started)
    if job.score_consistency:
        metadata["segments"] = describe.with_scores(metadata["segments"], chunks, assembler.scores)
    if job.captions.timestamps:
        metadata["segments"] = with_texts(metadata["segments"], job, chunks)
    return JobAudio(file, {**metadata, **captioned.metadata}, stats, captioned.files)


def run_job(job: Job, model: Model, progress=None, ticket: Ticket | None = None) -> tuple[dict, JobAudio]:
    """The whole job, delivered: the answer ({audio_base64 | audio_url | audio_path, metadata}) and
    the audio. If delivery fails, the audio is kept where the job's sink says (the command line's run
    folder), and the error says where."""
    made = synthesize(job, model, progress, ticket)
    answer = deliver(made.file, job)
    for name, (data, fmt) in made.files.items():
        answer.update(deliver_beside(data, fmt, job, name))
    return {**answer, "metadata": made.metadata}, made
