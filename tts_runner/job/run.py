"""The job graph: plan chunks -> generate (batched, with retries) -> assemble -> encode.
Each segment is assembled (trimmed, crossfaded, loudness-matched) on a worker thread as soon as
its last chunk is generated, while the model goes on with the next batch.

Reads `input`, `sampling`, `voices`, `chunking` and `batching` of a resolved config. The
generate step takes every chunk of the job, from every segment and voice, sorts them by
length so that a batch holds chunks of similar length, and runs them in batches bounded by
`batching.max_batch_size` and `batching.max_batch_chars`; `max_batch_size: 1` is the
sequential path. Results go back into their original order before assembly.

Retries are per chunk: output that is empty, non-finite or too short is generated again, in
a later batch. A batch that raises (CUDA out of memory, say) is split in half and retried,
down to single chunks; a single chunk that keeps failing ends the job with an error naming
its segment and chunk. A DeviceFailure (the GPU's context may be broken) ends the job at once.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from tts_runner.audio import dsp as audio
from tts_runner.audio import sinks
from tts_runner.errors import DeviceFailure, GenerationError, InputError, JobCancelled, SinkError
from tts_runner.job.chunking import split_text
from tts_runner.serving.model import SAMPLE_RATE, SAMPLES_PER_FRAME, ChunkRequest, Model
from tts_runner.serving.scheduler import Ticket
from tts_runner.voice import clones
from tts_runner.voice.voices import resolve_language, resolve_voice

log = logging.getLogger(__name__)

# progress(chunks done, chunks in all, seconds of audio made so far): after each batch, and during
# one at every host check of the engine (the seconds then estimated from the frames stepped)
Progress = Callable[[int, int, float], None]


@dataclass
class Chunk:
    index: int        # position in the job, across segments
    segment: int      # 0-based segment
    position: int     # 0-based position within its segment
    segment_chunks: int
    request: ChunkRequest
    voice: str = ""   # where the voice comes from: preset:<speaker>, clone:<name>, reference:<hash>, design
    attempts: int = 0

    def where(self, num_segments: int) -> str:
        return (f"segment {self.segment + 1} of {num_segments}, "
                f"chunk {self.position + 1} of {self.segment_chunks}")


@dataclass
class GenerateStats:
    model_seconds: float = 0.0
    calls: int = 0
    retries: int = 0
    splits: int = 0
    runaways: int = 0  # chunk attempts that reached their frame budget without ending
    frame_steps: int = 0  # talker steps the engine ran (prefill included), as it reports them
    audio_seconds: float = 0.0  # of accepted audio


def chunk_seed(job_seed: int, index: int, attempt: int) -> int:
    """The seed of one attempt at one chunk: a function of the job's seed and the chunk's place in
    the job alone, so a chunk draws the same whichever batch it lands in, and each retry draws anew."""
    digest = hashlib.blake2b(f"{job_seed}:{index}:{attempt}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


def seeded(chunk: Chunk, job_seed: int | None) -> ChunkRequest:
    """The chunk's request for its next attempt: with its own seed (chunk_seed) when the job has one."""
    if job_seed is None:
        return chunk.request
    return replace(chunk.request, seed=chunk_seed(job_seed, chunk.index, chunk.attempts))


@dataclass
class JobAudio:
    data: bytes
    format: str
    sample_rate: int
    duration_seconds: float
    num_segments: int
    num_chunks: int
    wall_seconds: float
    stats: GenerateStats
    seed: int
    segments: list[dict]  # each segment's start and end in the file, seconds, and its speaker


def plan(job: DictConfig, model: Model, voices: DictConfig, max_chars: int,
         cloning: DictConfig | None = None) -> tuple[list[Chunk], int]:
    """Split the job's text into chunks; resolve voices (presets, designed voices, or the clone
    prompts of the Base models) and language. Returns (chunks, segments)."""
    if job.text is not None:
        items = [{"text": job.text}]
    else:
        items = [dict(s) for s in job.segments]
    language = resolve_language(job.language, voices.languages, model.languages)
    chunks: list[Chunk] = []
    clones = Clones(job, model, voices, cloning)
    for s, item in enumerate(items):
        at = "$" if job.text is not None else f"$.segments[{s}]"
        voice = item.get("voice") or job.voice
        voice_at = f"{at}.voice" if item.get("voice") else "$.voice"
        instruct = item.get("instruct") or job.instruct or None
        speaker, clone, source = None, None, "design"
        if model.kind != "base" and (item.get("ref_audio") or job.get("ref_audio")):
            where = f"{at}.ref_audio" if item.get("ref_audio") else "$.ref_audio"
            raise InputError(f"Invalid input at {where}: model '{model.name}' does not clone voices; ref_audio is "
                             "for the Base models (1.7B-Base, 0.6B-Base).")
        if model.kind == "custom_voice":
            speaker = resolve_voice(voice, voices.aliases, model.speakers, voice_at)
            source = f"preset:{speaker}"
        elif model.kind == "voice_design" and not instruct:
            where = "$.params.instruct" if job.text is not None else f"{at}.instruct"
            raise InputError(f"Invalid input at {where}: model '{model.name}' designs a voice from an instruct "
                             "(params.instruct for the job, or a segment's own); describe the voice there.")
        elif model.kind == "base":
            clone, source = clones.prompt(item, at, voice, voice_at)
        texts = split_text(item["text"], max_chars)
        for p, text in enumerate(texts):
            request = ChunkRequest(text, speaker, language, instruct, clone=clone)
            chunks.append(Chunk(len(chunks), s, p, len(texts), request, voice=source))
    return chunks, len(items)


class Clones:
    """The clone prompt of each segment of a job on a Base model: the segment's own reference, the
    job's, or the saved voice its `voice` names; each distinct recording is read once per job."""

    def __init__(self, job: DictConfig, model: Model, voices: DictConfig, cloning: DictConfig | None):
        self.job, self.model, self.voices, self.cloning = job, model, voices, cloning
        self.read: dict[str, clones.Reference] = {}

    def prompt(self, item: dict, at: str, voice: str, voice_at: str) -> tuple:
        if self.cloning is None:
            raise InputError(f"model '{self.model.name}' clones voices, and no cloning settings were given.")
        if item.get("ref_audio"):
            ref = self._payload(item["ref_audio"], item.get("ref_text"), f"{at}.ref_audio")
        elif self.job.get("ref_audio"):
            ref = self._payload(self.job.ref_audio, self.job.get("ref_text"), "$.ref_audio")
        elif voice in self.voices.get("clones", {}):
            ref = self._saved(voice)
        else:
            saved = ", ".join(sorted(self.voices.get("clones", {}))) or "none configured"
            raise InputError(f"Invalid input at {voice_at}: model '{self.model.name}' clones a voice: give ref_audio "
                             f"(for the job, or this segment) or name a saved voice (voices.clones: {saved}).")
        return self.model.clone_prompt(ref), ref.source

    def _payload(self, value: str, text: str | None, where: str) -> clones.Reference:
        key = hashlib.sha256(value.encode()).hexdigest() + "\0" + (text or "")
        if key not in self.read:
            self.read[key] = clones.reference(clones.payload_bytes(value, where, self.cloning), text, where, self.cloning)
        return self.read[key]

    def _saved(self, name: str) -> clones.Reference:
        key = f"saved:{name}"
        if key not in self.read:
            saved = self.voices.clones[name]
            data = clones.saved_bytes(name, saved, self.cloning)
            self.read[key] = clones.reference(data, saved.get("text"), f"voices.clones.{name}.audio", self.cloning, name)
        return self.read[key]


FRAMES_PER_SECOND = SAMPLE_RATE / SAMPLES_PER_FRAME  # 12.5
READ_CHARS_PER_SECOND = 15  # read speech, for the progress bar's expected total


def frame_budget(text: str, budget: DictConfig | None, max_new_tokens: int, floor: int = 0) -> int | None:
    """The most frames a chunk of `text` may run to under `batching.frame_budget` (None: no budget):
    factor x seconds_per_char x characters + margin_seconds, and at least the floor plus the margin
    (so the model can always end after the floor), never above max_new_tokens - 1."""
    if not budget or budget.get("seconds_per_char") is None:
        return None
    seconds = budget.factor * budget.seconds_per_char * len(text) + budget.margin_seconds
    frames = max(math.ceil(seconds * FRAMES_PER_SECOND - 1e-9), floor + math.ceil(budget.margin_seconds * FRAMES_PER_SECOND))
    return max(1, min(frames, max_new_tokens - 1))


def ran_away(chunk: Chunk, wav: np.ndarray, floor: int) -> bool:
    """Did the chunk reach its frame budget without ending? Not when the floor left it no frame to
    end on (a floor at the budget forces the length)."""
    budget = chunk.request.max_frames
    floor = floor if chunk.request.floor is None else chunk.request.floor
    return budget is not None and budget > floor and wav.size // SAMPLES_PER_FRAME >= budget


def make_batches(chunks: list[Chunk], max_batch_size: int, max_batch_chars: int) -> list[list[Chunk]]:
    """Longest first, so each batch holds chunks of similar length; bounded in count and text."""
    batches: list[list[Chunk]] = []
    current: list[Chunk] = []
    chars = 0
    for chunk in sorted(chunks, key=lambda c: (-len(c.request.text), c.index)):
        size = len(chunk.request.text)
        if current and (len(current) >= max_batch_size or chars + size > max_batch_chars):
            batches.append(current)
            current, chars = [], 0
        current.append(chunk)
        chars += size
    if current:
        batches.append(current)
    return batches


def generate_all(
    model: Model,
    chunks: list[Chunk],
    num_segments: int,
    sampling: dict,
    batching: DictConfig,
    progress: Progress | None = None,
    on_result: Callable[[Chunk, np.ndarray], None] | None = None,
) -> tuple[dict[int, np.ndarray], int, GenerateStats]:
    """Audio for every chunk, keyed by chunk index, plus the sample rate and statistics;
    `on_result` hears each chunk's accepted audio as soon as it has it."""
    stats = GenerateStats()
    results: dict[int, np.ndarray] = {}
    sample_rate = SAMPLE_RATE
    job_seed = sampling.get("seed")

    def count_steps(steps: int) -> None:
        stats.frame_steps += steps

    batch_state = {"frames": 0, "seconds": 0.0}

    def during_batch(frames: int, going: int) -> None:
        batch_state["seconds"] += (frames - batch_state["frames"]) * going / FRAMES_PER_SECOND
        batch_state["frames"] = frames
        if progress:
            progress(len(results), len(chunks), stats.audio_seconds + batch_state["seconds"])

    pending = deque(make_batches(chunks, batching.max_batch_size, batching.max_batch_chars))
    while pending:
        batch = pending.popleft()
        started = time.perf_counter()
        try:
            requests = [seeded(c, job_seed) for c in batch]
            batch_state.update(frames=0, seconds=0.0)
            wavs, sample_rate = model.generate(requests, sampling, on_steps=count_steps, progress=during_batch)
        except DeviceFailure:
            raise  # nothing may run on this device again
        except Exception as exc:  # noqa: BLE001 - any other failure of a batch is retried smaller
            _release_memory(exc)
            problem = f"{type(exc).__name__}: {exc}"
            if len(batch) > 1:
                half = len(batch) // 2
                log.warning("Batch of %d failed (%s); splitting and retrying", len(batch), problem[:200])
                stats.splits += 1
                pending.extendleft([batch[half:], batch[:half]])
            else:
                _count_failure(batch[0], problem, batching.retries, num_segments, stats)
                pending.append(batch)
            continue
        finally:
            stats.model_seconds += time.perf_counter() - started
            stats.calls += 1
        if len(wavs) != len(batch):
            raise GenerationError(f"The model returned {len(wavs)} waveforms for a batch of {len(batch)}.")
        retry: list[Chunk] = []
        for chunk, wav in zip(batch, wavs, strict=False):
            problem = judge(chunk, wav, sample_rate, sampling, batching, stats)
            if problem is None:
                _accept(chunk, wav, sample_rate, results, stats, on_result)
            else:
                _count_failure(chunk, problem, batching.retries, num_segments, stats)
                retry.append(chunk)
        if retry:
            pending.extend(make_batches(retry, batching.max_batch_size, batching.max_batch_chars))
        if progress:
            progress(len(results), len(chunks), stats.audio_seconds)
    return results, sample_rate, stats


def judge(chunk: Chunk, wav: np.ndarray, sample_rate: int, sampling: dict, batching: DictConfig,
          stats: GenerateStats) -> str | None:
    """Why a chunk's audio must be made again (check_audio, or a runaway under `runaway: retry`), or None."""
    problem = check_audio(wav, chunk.request.text, sample_rate, sampling, batching, chunk.request.max_frames)
    if problem is None and ran_away(chunk, wav, int(sampling.get("min_new_tokens", 0))):
        stats.runaways += 1
        if batching.runaway == "retry":
            problem = (f"speech did not end within {chunk.request.max_frames / FRAMES_PER_SECOND:.1f} s "
                       f"for {len(chunk.request.text)} characters")
    return problem


def generate_scheduled(
    model: Model,
    chunks: list[Chunk],
    num_segments: int,
    sampling: dict,
    batching: DictConfig,
    progress: Progress | None = None,
    on_result: Callable[[Chunk, np.ndarray], None] | None = None,
    ticket: Ticket | None = None,
    listener: Callable[[Chunk], Callable | None] | None = None,
    on_retry: Callable[[Chunk, str, str], None] | None = None,
) -> tuple[dict[int, np.ndarray], int, GenerateStats]:
    """generate_all through the model's scheduler: every chunk is handed over at once (in job order),
    shares rows with other jobs' chunks, and is judged and decoded here, on the job's thread, as its
    codes come back; a chunk that fails is handed over again with its next seed. `listener(chunk)`
    may give a callable that hears the chunk's codes so far while it runs, and `on_retry(chunk, problem,
    where)` hears of each chunk made again and may refuse it by raising (streaming)."""
    scheduler = model.scheduler
    ticket = ticket or Ticket("job")
    stats = GenerateStats()
    results: dict[int, np.ndarray] = {}
    job_seed = sampling.get("seed")
    started = time.perf_counter()

    def submit(batch: list[Chunk]) -> dict:
        items = []
        for chunk in batch:
            request = seeded(chunk, job_seed)
            items.append((request, model.row_settings(request, sampling), listener(chunk) if listener else None))
        futures = scheduler.submit(ticket, items)
        return {future: (chunk, request) for future, chunk, (request, _, _) in zip(futures, batch, items, strict=True)}

    def fail(chunk: Chunk, problem: str) -> Chunk:
        _count_failure(chunk, problem, batching.retries, num_segments, stats)
        if on_retry:
            on_retry(chunk, problem, chunk.where(num_segments))
        return chunk

    waiting = submit(chunks)
    try:
        while waiting:
            done, _ = wait(waiting, timeout=0.5, return_when=FIRST_COMPLETED)
            if ticket.cancelled:
                raise JobCancelled("The job was cancelled.")
            ready, retry = [], []
            for future in done:
                chunk, request = waiting.pop(future)
                try:
                    ready.append((chunk, request, future.result()))
                except DeviceFailure:
                    raise
                except Exception as exc:  # noqa: BLE001 - the round failed (out of memory, say): try the chunk again
                    retry.append(fail(chunk, f"{type(exc).__name__}: {exc}"))
            wavs = scheduler.decode([(request, codes) for _, request, codes in ready])
            for (chunk, _, codes), wav in zip(ready, wavs, strict=True):
                stats.calls += 1
                stats.frame_steps += codes.shape[0] + 1
                problem = judge(chunk, wav, SAMPLE_RATE, sampling, batching, stats)
                if problem is None:
                    _accept(chunk, wav, SAMPLE_RATE, results, stats, on_result)
                else:
                    retry.append(fail(chunk, problem))
            if retry:
                waiting.update(submit(sorted(retry, key=lambda c: c.index)))
            if progress and done:
                progress(len(results), len(chunks), stats.audio_seconds)
    except BaseException:
        scheduler.cancel(ticket)  # the job is over: its other chunks give their rows back
        raise
    stats.model_seconds = time.perf_counter() - started
    return results, SAMPLE_RATE, stats


def check_audio(wav: np.ndarray, text: str, sample_rate: int, sampling: dict, batching: DictConfig,
                max_frames: int | None = None) -> str | None:
    """Why this chunk's audio must be generated again, or None when it is fine."""
    if wav.size == 0:
        return "the model returned empty audio"
    if not np.isfinite(wav).all():
        return "the model returned non-finite samples (NaN or inf)"
    frame_s = SAMPLES_PER_FRAME / sample_rate
    # qwen_tts returns at most max_new_tokens - 1 frames; the floor is enforced by the model.
    ceiling = (int(sampling["max_new_tokens"]) - 1 if max_frames is None else max_frames) * frame_s
    floor = int(sampling.get("min_new_tokens", 0)) * frame_s
    expected = min(max(len(text) * batching.min_seconds_per_char, floor), ceiling)
    seconds = wav.size / sample_rate
    if seconds + 1e-6 < expected:
        return f"the audio is too short ({seconds:.2f} s for {len(text)} characters; expected at least {expected:.2f} s)"
    return None


def chunk_places(spans: list[tuple[int, int]], offset: int, rate: int) -> list[tuple[float, float]]:
    """Chunk spans in samples within a segment that starts at sample `offset`, as seconds in the file."""
    return [(round((offset + a) / rate, 3), round((offset + b) / rate, 3)) for a, b in spans]


class Assembler:
    """Each segment's audio, built as soon as its last chunk is generated, on a worker thread, so
    post-processing overlaps generation (on a GPU the host is idle while a captured frame replays):
    every chunk's silent edges trimmed, the segment's chunks crossfaded, the segment brought to the
    target loudness. `finish()` joins the segments in order."""

    def __init__(self, chunks: list[Chunk], num_segments: int, sample_rate: int, chunking: DictConfig,
                 post: DictConfig):
        self.sample_rate, self.chunking, self.post = sample_rate, chunking, post
        self.waiting = [0] * num_segments  # chunks still to come, per segment
        for chunk in chunks:
            self.waiting[chunk.segment] += 1
        self.parts: list[dict[int, np.ndarray]] = [{} for _ in range(num_segments)]
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="assemble")
        self.segments: list = [None] * num_segments

    def add(self, chunk: Chunk, wav: np.ndarray) -> None:
        self.parts[chunk.segment][chunk.position] = wav
        self.waiting[chunk.segment] -= 1
        if self.waiting[chunk.segment] == 0:
            parts = [wav for _, wav in sorted(self.parts[chunk.segment].items())]
            self.segments[chunk.segment] = self.pool.submit(self._segment, parts)
            self.parts[chunk.segment] = {}

    def _segment(self, parts: list[np.ndarray]) -> tuple[np.ndarray, list[tuple[int, int]]]:
        trim, rate = self.post.trim, self.sample_rate
        if trim.threshold_db is not None:
            parts = [audio.trim_silence(wav, rate, trim.threshold_db, trim.keep_ms) for wav in parts]
        joined = audio.crossfade_concat(parts, rate, self.chunking.crossfade_ms)
        spans = audio.crossfade_spans([p.size for p in parts], rate, self.chunking.crossfade_ms)
        return audio.match_loudness(joined, rate, self.post.loudness_lufs, self.post.true_peak_dbtp), spans

    def finish(self) -> tuple[np.ndarray, list[tuple]]:
        """The job's audio and each segment's (start, end, [each chunk's (start, end)]) in seconds."""
        try:
            made = [future.result() for future in self.segments]
        finally:
            self.pool.shutdown(wait=False, cancel_futures=True)
        segments = [samples for samples, _ in made]
        joined, spans = audio.join_segments(segments, self.sample_rate, self.chunking.segment_gap_ms)
        starts = audio.segment_starts([s.size for s in segments], self.sample_rate, self.chunking.segment_gap_ms)
        return joined, [(start, end, chunk_places(chunks, at, self.sample_rate))
                        for (start, end), at, (_, chunks) in zip(spans, starts, made, strict=True)]

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def prepare(cfg: DictConfig, model: Model) -> tuple[list[Chunk], int, dict]:
    """A resolved job's chunks (with their frame budgets), segment count and sampling settings
    (the seed drawn when the job gave none)."""
    chunks, num_segments = plan(cfg.input, model, cfg.voices, cfg.chunking.max_chars, cfg.get("cloning"))
    sampling = OmegaConf.to_container(cfg.sampling, resolve=True)
    if sampling.get("seed") is None:
        sampling["seed"] = random.randrange(2**31)  # returned in the metadata, so the job can be repeated
    for chunk in chunks:
        budget = frame_budget(chunk.request.text, cfg.batching.get("frame_budget"), int(sampling["max_new_tokens"]),
                              int(sampling.get("min_new_tokens") or 0))
        chunk.request = replace(chunk.request, max_frames=budget)
    return chunks, num_segments, sampling


def synthesize(cfg: DictConfig, model: Model, progress: Progress | None = None, ticket: Ticket | None = None) -> JobAudio:
    """Run one resolved job on `model`; return the encoded audio and what it took. With a scheduler
    (fast engine) the job's chunks share rows with other jobs; `ticket` lets the caller cancel it."""
    started = time.perf_counter()
    chunks, num_segments, sampling = prepare(cfg, model)
    expected = round(sum(len(c.request.text) for c in chunks) / READ_CHARS_PER_SECOND)
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

        assembler = Assembler(chunks, num_segments, SAMPLE_RATE, cfg.chunking, cfg.audio)
        try:
            if model.scheduler is not None:
                _, sample_rate, stats = generate_scheduled(model, chunks, num_segments, sampling, cfg.batching,
                                                           report, assembler.add, ticket)
            else:
                _, sample_rate, stats = generate_all(model, chunks, num_segments, sampling, cfg.batching, report,
                                                     assembler.add)
        except BaseException:
            assembler.close()
            raise
    if sample_rate != SAMPLE_RATE:
        raise GenerationError(f"The model made audio at {sample_rate} Hz; tts-runner expects {SAMPLE_RATE}.")
    samples, spans = assembler.finish()
    rate = int(cfg.audio.sample_rate)
    samples = audio.resample(samples, sample_rate, rate)
    data = audio.encode(samples, rate, cfg.input.output_format, cfg.audio.mp3_bitrate)
    duration = round(samples.size / rate, 3)  # the audio we made, exactly (tests read the files back)
    return JobAudio(data, cfg.input.output_format, rate, duration, num_segments, len(chunks),
                    round(time.perf_counter() - started, 3), stats, sampling["seed"], segment_metadata(chunks, spans))


def segment_metadata(chunks: list[Chunk], spans: list[tuple]) -> list[dict]:
    """The metadata's segments: each one's place in the file, its speaker and voice, and each chunk's
    place in it (seconds, from its fade-in to its last sample); `spans` as Assembler.finish gives them."""
    voices = {c.segment: (c.request.speaker, c.voice) for c in chunks}
    return [{"start": start, "end": end, "speaker": voices[i][0], "voice": voices[i][1],
             "chunks": [{"start": a, "end": b} for a, b in places]}
            for i, (start, end, places) in enumerate(spans)]


def run_job(cfg: DictConfig, model: Model, job_id: str, out_dir: Path | None = None,
            progress: Progress | None = None, keep: Path | None = None,
            ticket: Ticket | None = None) -> tuple[dict, JobAudio]:
    """The whole graph: synthesize, deliver to the sink; return the response and the audio. The
    sink's settings are checked before anything is generated; if delivery fails after all, the
    audio is written into `keep` (when given) and the error says where."""
    sinks.check(cfg.sink)
    job = synthesize(cfg, model, progress, ticket)
    try:
        response = sinks.deliver(job.data, job.format, cfg.sink, job_id, cfg.input.name, out_dir)
    except SinkError as exc:
        if keep is None:
            raise
        kept = sinks.write_file(job.data, job.format, keep, cfg.input.name)
        raise SinkError(f"{exc} The audio is kept at {kept}.") from None
    response["metadata"] = {
        "duration_seconds": job.duration_seconds,
        "sample_rate": job.sample_rate,
        "format": job.format,
        "num_segments": job.num_segments,
        "num_chunks": job.num_chunks,
        "generation_time_seconds": job.wall_seconds,
        "model": model.name,
        "seed": job.seed,
        "runaways": job.stats.runaways,
        "retries": job.stats.retries,
        "segments": job.segments,
    }
    return response, job


def _accept(chunk: Chunk, wav: np.ndarray, sample_rate: int, results: dict, stats: GenerateStats,
            on_result: Callable[[Chunk, np.ndarray], None] | None) -> None:
    results[chunk.index] = wav
    stats.audio_seconds += wav.size / sample_rate
    if on_result:
        on_result(chunk, wav)


def _count_failure(chunk: Chunk, problem: str, retries: int, num_segments: int, stats: GenerateStats) -> None:
    chunk.attempts += 1
    if chunk.attempts >= retries:
        raise GenerationError(
            f"Generation failed on {chunk.where(num_segments)} after {chunk.attempts} attempts: {problem}"
        )
    stats.retries += 1
    log.warning("Retrying %s (attempt %d failed: %s)", chunk.where(num_segments), chunk.attempts, problem[:200])


def _release_memory(exc: Exception) -> None:
    if isinstance(exc, torch.cuda.OutOfMemoryError) and torch.cuda.is_available():
        torch.cuda.empty_cache()
