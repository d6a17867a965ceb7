"""A job as its stages take it: typed and immutable, built once at the edge (tts_runner/edge/jobs.py)
from the composed config, the payload or job spec, and the command line.

`Job` holds what to say (its segments, voices, model, language), how codes are chosen (`Sampling`),
the file it asks for (`Output`), and the worker's recipe for making it (`Recipe`: one value per
config group the stages read). Nothing below the edge reads a DictConfig or a raw payload.
"""

from __future__ import annotations

from dataclasses import dataclass

from tts_runner.audio.sinks import Sink
from tts_runner.engines.sampling import Sampling
from tts_runner.voice.clones import Cloning
from tts_runner.voice.saved import VoiceStore
from tts_runner.voice.voices import Voices


@dataclass(frozen=True)
class Segment:
    """One segment of a job as given: its text and what it sets for itself (None: the job's)."""

    text: str
    voice: str | None = None
    instruct: str | None = None
    ref_audio: str | None = None
    ref_text: str | None = None
    chapter: str | None = None   # a chapter starts here, with this title (chapters: true)
    clone_mode: str | None = None  # Base models: xvector | icl (None: the job's)


@dataclass(frozen=True)
class Captions:
    """What a job asks to know of its words and parts beside the audio (tts_runner/captions/)."""

    timestamps: str | None = None   # word | segment | None
    subtitles: str | None = None    # srt | vtt | None
    chapters: bool = False
    align_words: bool = False       # words are force-aligned (word timestamps, or subtitles in a language it speaks)


@dataclass(frozen=True)
class Output:
    """The file a job asks for."""

    format: str = "wav"                 # wav | mp3 | flac | opus | aac | pcm
    sample_rate: int = 24000
    mp3_bitrate: int = 128              # kbps, for mp3 and aac
    speed: float = 1.0                  # tempo (pitch kept): the file lasts 1/speed as long
    loudness_lufs: float | None = -16.0  # each segment's integrated loudness; None: as made


@dataclass(frozen=True)
class Chunking:
    """The `chunking` group: how text becomes chunks (plan), and chunks one segment's audio (assemble)."""

    max_chars: int = 120
    crossfade_ms: float = 40.0
    segment_gap_ms: float = 200.0


@dataclass(frozen=True)
class FrameBudget:
    """The runaway guard: a chunk may run to factor x seconds_per_char x characters + margin_seconds."""

    seconds_per_char: float = 0.0667
    factor: float = 1.75
    margin_seconds: float = 3.0


@dataclass(frozen=True)
class Batching:
    """The `batching` group: the generate and check stages."""

    max_batch_size: int = 16
    max_batch_chars: int = 4000
    retries: int = 3                    # attempts per chunk
    min_seconds_per_char: float = 0.02  # shorter audio is made again
    frame_budget: FrameBudget | None = FrameBudget()  # None: no budget (only max_new_tokens)
    runaway: str = "retry"              # retry | keep


@dataclass(frozen=True)
class Trim:
    threshold_db: float = -50.0  # a 10 ms window quieter than this (dBFS RMS) is silence
    keep_ms: float = 30.0        # kept beside the sound at each end


@dataclass(frozen=True)
class Mastering:
    """The `audio` group's finishing (the file's rate, bit rate and loudness are the job's Output)."""

    trim: Trim | None = Trim()    # None: no trimming
    true_peak_dbtp: float = -1.0


@dataclass(frozen=True)
class Pacing:
    """The `stream` group: when a streamed job's running chunk is decoded."""

    first_piece_frames: int = 4
    piece_frames: int = 24
    left_context_frames: int | None = 72  # None: the whole chunk so far
    schedule: str = "adaptive"            # adaptive: a piece comes early when the listener would run low; fixed
    low_water_seconds: float = 0.4        # adaptive: decode what there is once the audio sent has less left to play


@dataclass(frozen=True)
class Recipe:
    """How a worker makes every job: one value per config group the stages read."""

    chunking: Chunking
    batching: Batching
    mastering: Mastering
    pacing: Pacing
    voices: Voices
    cloning: Cloning
    sink: Sink
    saved: VoiceStore | None = None     # voices saved at run time (voices.saved_dir): cloned by name, save_voice


@dataclass(frozen=True)
class Job:
    id: str                         # the caller's (RunPod's job id; the command line's job name)
    name: str                       # the file's base name (file sink)
    model: str                      # a configured variant
    segments: tuple[Segment, ...]
    as_text: bool                   # given as `text` (one segment), not `segments`
    voice: str                      # for segments that name none
    language: str                   # as given: an ISO code, a library name or auto
    instruct: str | None
    ref_audio: str | None
    ref_text: str | None
    sampling: Sampling              # its seed drawn at the edge when none was given
    output: Output
    stream: bool
    recipe: Recipe
    captions: Captions = Captions()
    clone_mode: str = "xvector"     # Base models and designed voices: xvector | icl (cloning.mode)
    design: str = "once"            # VoiceDesign: once (design, then clone) | per_chunk (voices.design.mode)
    save_voice: str | None = None   # keep the designed voice under this name (Recipe.saved)
    score_consistency: bool = False  # each multi-chunk segment's voice consistency in the metadata

    def at(self, segment: int) -> str:
        """The JSON path of a segment, for messages: $ for a job given as text."""
        return "$" if self.as_text else f"$.segments[{segment}]"

    @property
    def text_length(self) -> int:
        return sum(len(s.text) for s in self.segments)
