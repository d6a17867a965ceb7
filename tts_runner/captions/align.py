"""Word times by forced alignment: a chunk's text against its own audio, through pocketsphinx.

pocketsphinx's wheel carries an en-US acoustic model and dictionary, so words can be aligned for
English only (`LANGUAGES`); other languages get segment and chunk times, never guessed word times.

A chunk's text is split into its words as written (punctuation kept on them, for subtitles). Each
word the dictionary knows is aligned to the audio (10 ms frames); a run of words it does not know
(a name, a number written in digits) takes the stretch between its aligned neighbours, marked
`aligned: False`. When no path through the audio is found, every word of the chunk gets the
chunk's bounds, marked the same way: a word's time is measured or marked, never invented.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

ALIGN_RATE = 16000          # what pocketsphinx's model takes
FRAME_SECONDS = 0.01        # its frame
LANGUAGES = ("en", "english")  # what its model speaks (the library's name and the ISO code)
RELEASE_DB = 35.0           # a word's end goes on while its sound stays within this of the chunk's loudest frame


@dataclass(frozen=True)
class Word:
    word: str       # as written in the text
    start: float    # seconds from the start of the audio aligned
    end: float
    aligned: bool = True


def speaks(language: str) -> bool:
    """Can words of this language be aligned?"""
    return language.strip().lower() in LANGUAGES


def words_of(text: str) -> list[str]:
    """The text's words as written: split at whitespace, pieces without a letter or digit dropped."""
    return [w for w in text.split() if re.search(r"\w", w)]


def spoken(word: str) -> str:
    """A written word as the dictionary spells it: lower case, letters and apostrophes only."""
    return re.sub(r"[^a-z']", "", word.lower()).strip("'")


def _known(decoder, written: list[str]) -> list[int]:
    """The indices of the written words the dictionary knows."""
    return [i for i, w in enumerate(written) if spoken(w) and decoder.lookup_word(spoken(w)) is not None]


def known(text: str) -> list[str]:
    """The words of `text` the aligner's dictionary knows (as written)."""
    written = words_of(text)
    return [written[i] for i in _known(_decoder(), written)]


def align(samples: np.ndarray, rate: int, text: str) -> list[Word]:
    """Each word of `text` with its time in `samples` (mono float, at `rate`)."""
    written = words_of(text)
    if not written:
        return []
    length = samples.size / rate
    decoder = _decoder()
    known = _known(decoder, written)
    times = _aligned(decoder, samples, rate, [spoken(written[i]) for i in known]) if known else None
    if times is None:
        return [Word(w, 0.0, round(length, 3), aligned=False) for w in written]
    found: dict[int, tuple[float, float]] = dict(zip(known, times, strict=True))
    out: list[Word] = []
    i = 0
    while i < len(written):
        if i in found:
            start, end = found[i]
            out.append(Word(written[i], start, end))
            i += 1
            continue
        j = i  # a run of words the dictionary lacks: the stretch between the aligned words beside it
        while j < len(written) and j not in found:
            j += 1
        start = out[-1].end if out else 0.0
        end = found[j][0] if j in found else round(length, 3)
        out.extend(Word(written[k], start, max(start, end), aligned=False) for k in range(i, j))
        i = j
    return out


def _decoder():
    from pocketsphinx import Decoder

    # wide beams: a forced alignment has one path to find, and the default beams lost it on some
    # chunks (no path at all); the whole utterance in one call (full_utt) aligned closest
    return Decoder(samprate=ALIGN_RATE, loglevel="FATAL", bestpath=False, beam=1e-100, wbeam=1e-80, pbeam=1e-100)


def _sounding_until(levels: np.ndarray, start: int, stop: int, floor: float) -> int:
    """The frame after the last one in [start, stop) still louder than `floor`, from `start` on
    (a word's quiet release, which the acoustic model gives to the pause after it)."""
    end = start
    while end < stop and levels[end] > floor:
        end += 1
    return end


def _aligned(decoder, samples: np.ndarray, rate: int, words: list[str]) -> list[tuple[float, float]] | None:
    """The (start, end) of each of `words` (dictionary spellings), or None when no path is found."""
    import librosa

    decoder.set_align_text(" ".join(words))
    audio = librosa.resample(np.asarray(samples, dtype=np.float32), orig_sr=rate, target_sr=ALIGN_RATE)
    peak = float(np.abs(audio).max(initial=0.0))
    if peak == 0:
        return None
    audio = audio * (0.9 / peak)  # its feature normalisation starts from a loud recording's
    data = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    decoder.start_utt()
    decoder.process_raw(data, False, True)
    decoder.end_utt()
    if decoder.hyp() is None:
        return None
    segments = [(re.sub(r"\(\d+\)$", "", s.word), s.start_frame, s.end_frame + 1) for s in decoder.seg()]
    segments = [s for s in segments if s[0] not in ("<s>", "</s>", "<sil>", "(NULL)", "[NOISE]")]
    if [s[0] for s in segments] != words:
        return None
    levels = _levels(audio)
    floor = float(levels.max(initial=-120.0)) - RELEASE_DB
    times = []
    for k, (_, a, b) in enumerate(segments):
        stop = segments[k + 1][1] if k + 1 < len(segments) else levels.size
        b = max(b, _sounding_until(levels, b, stop, floor))
        times.append((round(a * FRAME_SECONDS, 3), round(b * FRAME_SECONDS, 3)))
    return times


def _levels(audio: np.ndarray) -> np.ndarray:
    """dB RMS of each 10 ms frame (the aligner's frames) of 16 kHz audio."""
    window = int(ALIGN_RATE * FRAME_SECONDS)
    n = audio.size // window
    frames = audio[: n * window].reshape(n, window)
    return 10 * np.log10(np.mean(frames ** 2, axis=1) + 1e-12)
