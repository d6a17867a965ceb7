"""Audio encoded as it is made: pieces of float samples in, bytes a player can start on out.

Raw PCM16 and WAV (a header whose sizes say "unknown length", 0xFFFFFFFF, as streamed WAV does) are
written here; MP3 frames (libsndfile's LAME, as files are), Ogg Opus pages and AAC in ADTS frames come
from one long-lived ffmpeg process per stream, fed on its stdin and read on a thread of its own, so a
piece's bytes go out as soon as the encoder has a frame of them. A speed other than 1 runs the whole
stream through ffmpeg's atempo (tts_runner.audio.tempo) in that same process: one continuous tempo
change, with no seams at the pieces' edges.
"""

from __future__ import annotations

import contextlib
import io
import struct
import subprocess
import threading

import numpy as np
import soundfile as sf

from tts_runner.audio.formats import ffmpeg_path
from tts_runner.audio.tempo import atempo_chain
from tts_runner.errors import SinkError

STREAM_FORMATS = ("pcm", "wav", "mp3", "opus", "aac")
_FFMPEG_OUT = {  # ffmpeg's output options for each format
    "pcm": ["-f", "s16le"],
    "wav": ["-f", "s16le"],  # our own header goes first
    "mp3": ["-c:a", "libmp3lame", "-f", "mp3"],
    "opus": ["-c:a", "libopus", "-f", "ogg", "-page_duration", "100000"],  # an Ogg page every 0.1 s
    "aac": ["-c:a", "aac", "-f", "adts"],
}


def wav_stream_header(sample_rate: int) -> bytes:
    """A mono PCM16 WAV header of unknown length (RIFF and data sizes 0xFFFFFFFF)."""
    return (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVEfmt "
            + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
            + b"data" + struct.pack("<I", 0xFFFFFFFF))


def pcm16(samples: np.ndarray) -> bytes:
    pcm = np.nan_to_num(np.clip(samples, -1.0, 1.0), nan=0.0)
    return np.round(pcm * 32767).astype("<i2").tobytes()


class StreamEncoder:
    """One stream's encoder: `encode(samples)` takes a piece, `finish()` ends the stream; `emit(bytes)`
    hears each run of encoded bytes as soon as it is ready (on the caller's thread for PCM, WAV and MP3
    at speed 1, on the encoder's reader thread for ffmpeg's), and the last one before finish returns.
    `seconds` is the length of the audio encoded (after the tempo change)."""

    def __init__(self, fmt: str, sample_rate: int, emit, speed: float = 1.0, bitrate_kbps: int = 128):
        if fmt not in STREAM_FORMATS:
            raise ValueError(f"unknown stream format {fmt!r}; allowed: {', '.join(STREAM_FORMATS)}")
        self.format, self.sample_rate, self.speed, self.emit = fmt, int(sample_rate), float(speed), emit
        self.samples_in = 0
        self.bytes_out = 0  # PCM bytes after ffmpeg (pcm and wav), for an exact length
        self.header = wav_stream_header(self.sample_rate) if fmt == "wav" else b""
        self.proc: subprocess.Popen | None = None
        self.sndfile = None
        if fmt == "mp3" and self.speed == 1.0:
            self.buffer = io.BytesIO()
            level = 1.0 - (min(max(bitrate_kbps, 32), 320) - 32) / 288  # libsndfile: 0 the highest bit rate
            self.sndfile = sf.SoundFile(self.buffer, "w", self.sample_rate, 1, format="MP3", subtype="MPEG_LAYER_III",
                                        compression_level=level, bitrate_mode="CONSTANT")
            self.read = 0
        elif fmt in ("mp3", "opus", "aac") or self.speed != 1.0:
            self._start_ffmpeg(bitrate_kbps)

    def _start_ffmpeg(self, bitrate_kbps: int) -> None:
        tempo = ["-af", atempo_chain(self.speed)] if self.speed != 1.0 else []
        rate = ["-b:a", f"{int(bitrate_kbps)}k"] if self.format in ("mp3", "aac", "opus") else []
        self.proc = subprocess.Popen(
            [ffmpeg_path(), "-hide_banner", "-loglevel", "error", "-f", "f32le", "-ar", str(self.sample_rate),
             "-ac", "1", "-i", "pipe:0", *tempo, *_FFMPEG_OUT[self.format], *rate, "-flush_packets", "1", "pipe:1"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.reader = threading.Thread(target=self._read, name="stream-encoder", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        header, self.header = self.header, b""
        while data := self.proc.stdout.read1(65536):
            if self.format in ("pcm", "wav"):
                self.bytes_out += len(data)
            self.emit(header + data)
            header = b""

    def encode(self, samples: np.ndarray) -> None:
        self.samples_in += samples.size
        if self.sndfile is not None:
            self.sndfile.write(np.clip(samples, -1.0, 1.0))
            self._send(self._sndfile_bytes())
        elif self.proc is None:
            data = pcm16(samples)
            self.bytes_out += len(data)
            self._send(data)
        else:
            try:
                self.proc.stdin.write(np.clip(samples, -1.0, 1.0).astype("<f4").tobytes())
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError) as exc:
                raise SinkError(f"The {self.format} stream encoder (ffmpeg) stopped: {self._stderr()}") from exc

    def finish(self) -> None:
        """Encode what is held and hand it to `emit` (on return, every byte of the stream has been)."""
        if self.sndfile is not None:
            self.sndfile.close()
            self._send(self._sndfile_bytes())
        elif self.proc is None:
            self._send(b"")
        else:
            self.proc.stdin.close()
            self.reader.join()
            if self.proc.wait() != 0:
                raise SinkError(f"The {self.format} stream encoder (ffmpeg) failed: {self._stderr()}")
            if self.header:  # no audio at all
                self._send(b"")

    def _send(self, data: bytes) -> None:
        head, self.header = self.header, b""
        if head or data:
            self.emit(head + data)

    def close(self) -> None:
        """Let go of everything the encoder holds: ffmpeg (killed if it still runs), its reader thread
        and pipes, the MP3 writer. Safe to call again, and after finish()."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.reader.join()  # ffmpeg's stdout has ended: the reader has read its last
            for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                with contextlib.suppress(OSError):
                    pipe.close()
        if self.sndfile is not None and not self.sndfile.closed:
            self.sndfile.close()

    @property
    def seconds(self) -> float:
        """The length of the audio encoded so far: exact for pcm and wav, and for the others at speed 1;
        the input's length / speed for compressed formats at another speed."""
        if self.format in ("pcm", "wav"):
            return self.bytes_out / 2 / self.sample_rate
        return self.samples_in / self.speed / self.sample_rate

    def _sndfile_bytes(self) -> bytes:
        data = self.buffer.getvalue()[self.read:]
        self.read += len(data)
        return data

    def _stderr(self) -> str:
        try:
            return self.proc.stderr.read().decode(errors="replace")[:300] or "no message"
        except Exception:  # noqa: BLE001
            return "no message"
