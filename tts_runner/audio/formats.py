"""Audio files: float samples to WAV, MP3, FLAC, Ogg Opus or raw PCM bytes, and files back to samples
(MP3 through ffmpeg)."""

from __future__ import annotations

import functools
import io
import shutil
import subprocess
import warnings

import numpy as np
import soundfile as sf

from tts_runner.errors import SinkError

FORMATS = ("wav", "mp3", "flac", "opus", "aac", "pcm")
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)  # the rates Opus codes
MP3_MAX_KBPS_BELOW_32K = 160  # MPEG-2 layer III (16 to 24 kHz) stops at 160 kbps; 320 needs 32 kHz or more


def encode(audio: np.ndarray, sample_rate: int, fmt: str, mp3_bitrate: int = 128) -> bytes:
    """Mono 16-bit audio as WAV, FLAC, Ogg Opus, raw PCM (little-endian), MP3 or AAC in ADTS
    frames (both through ffmpeg, at `mp3_bitrate` kbps). Opus takes 8, 12, 16, 24 or 48 kHz."""
    pcm = np.clip(audio, -1.0, 1.0, dtype=np.float32)  # the job's audio is finite: every chunk was checked
    pcm[np.isnan(pcm)] = 0.0  # (but the encoder must never pass a NaN on)
    if fmt == "pcm":
        return (np.round(pcm * 32767)).astype("<i2").tobytes()
    if fmt in ("flac", "opus"):
        out = io.BytesIO()
        if fmt == "opus" and sample_rate not in OPUS_RATES:
            raise ValueError(f"Opus codes {', '.join(map(str, OPUS_RATES))} Hz, not {sample_rate}")
        sf.write(out, pcm, sample_rate, format="FLAC" if fmt == "flac" else "OGG",
                 subtype="PCM_16" if fmt == "flac" else "OPUS")
        return out.getvalue()
    buf = io.BytesIO()
    sf.write(buf, pcm, sample_rate, format="WAV", subtype="PCM_16")
    if fmt == "wav":
        return buf.getvalue()
    if fmt == "aac":
        return ffmpeg(["-f", "wav", "-i", "pipe:0", "-c:a", "aac", "-b:a", f"{int(mp3_bitrate)}k", "-f", "adts",
                       "pipe:1"], buf.getvalue(), "encode AAC")
    if fmt == "mp3":
        with warnings.catch_warnings():  # pydub warns at import when ffmpeg is not on PATH
            warnings.simplefilter("ignore", RuntimeWarning)
            from pydub import AudioSegment
        AudioSegment.converter = ffmpeg_path()
        segment = AudioSegment.from_wav(io.BytesIO(buf.getvalue()))
        out = io.BytesIO()
        segment.export(out, format="mp3", bitrate=f"{int(mp3_bitrate)}k")
        return out.getvalue()
    raise ValueError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")


def read(data: bytes, fmt: str) -> tuple[np.ndarray, int]:
    """A file's float samples and sample rate (MP3 and AAC through ffmpeg; the others through libsndfile)."""
    if fmt in ("mp3", "aac"):
        data = ffmpeg(["-f", "mp3" if fmt == "mp3" else "aac", "-i", "pipe:0", "-f", "wav", "-acodec", "pcm_s16le",
                       "pipe:1"], data, f"decode the {fmt.upper()}")
    samples, sample_rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    return samples, sample_rate


def ffmpeg(args: list[str], data: bytes, what: str) -> bytes:
    """ffmpeg's output for `data` on its stdin, with `args` after the quiet flags; SinkError naming `what`."""
    proc = subprocess.run([ffmpeg_path(), "-hide_banner", "-loglevel", "error", *args], input=data,
                          capture_output=True, check=False)
    if proc.returncode != 0:
        raise SinkError(f"ffmpeg could not {what}: {proc.stderr.decode(errors='replace')[:300]}")
    return proc.stdout


@functools.cache
def ffmpeg_path() -> str:
    """ffmpeg from PATH, else the binary the imageio-ffmpeg package bundles."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as exc:  # noqa: BLE001 - any failure means: no ffmpeg
        raise SinkError(
            "MP3 needs ffmpeg: install it (apt-get install ffmpeg) or the imageio-ffmpeg package."
        ) from exc
