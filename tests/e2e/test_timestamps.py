"""Words on a clock: word times found by forced alignment, on real speech (espeak-ng recordings whose
word boundaries are known: tests/fixtures/words/make.py), placed in the file's time; subtitles read
back by the `srt` and `webvtt-py` parsers; chapters read back by ffmpeg; the refusals.

The jobs run on the tiny model, whose audio is noise: for the timing tests each chunk's audio is
replaced by the recording of its text (the model's decode, patched), so alignment meets speech and
the trimming, crossfades, gaps and loudness of the job graph run as they do for any job. Where each
recording landed in the file is found independently, by cross-correlation of the recording with
the file, not from the job's own arithmetic."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import srt
import webvtt
from scipy.signal import correlate

from tests.helpers.config import NATURAL
from tests.helpers.media import agrees, chapters_by_ffmpeg
from tts_runner.captions.align import align
from tts_runner.edge.worker import Worker

HERE = Path(__file__).resolve().parents[1] / "fixtures" / "words"
TRUTH = json.loads((HERE / "truth.json").read_text())
SENTENCES = [text for text in TRUTH if not text.startswith("_")]
RATE = 24000


def recording(text: str) -> np.ndarray:
    samples, rate = sf.read(HERE / TRUTH[text]["file"], dtype="float32")
    assert rate == RATE
    return samples


def errors(expected: list[dict], got: list[dict]) -> np.ndarray:
    assert [w["word"] for w in got] == [w["word"] for w in expected]
    return np.array([abs(a[k] - b[k]) for a, b in zip(expected, got, strict=True) for k in ("start", "end")])


def test_the_aligner_finds_known_word_boundaries_within_50_ms_on_average():
    found = []
    for text in SENTENCES:
        words = align(recording(text), RATE, text)
        assert all(w.aligned for w in words)
        found.append(errors(TRUTH[text]["words"], [{"word": w.word, "start": w.start, "end": w.end} for w in words]))
    every = np.concatenate(found)
    print(f"aligner on the fixtures: mean {1000 * every.mean():.0f} ms, worst {1000 * every.max():.0f} ms")
    assert every.mean() <= 0.050 and every.max() <= 0.150


def test_a_sentence_read_whole_aligns_in_order_within_the_audio():
    whole = TRUTH["_sentence"]
    samples, _ = sf.read(HERE / whole["file"], dtype="float32")
    words = align(samples, RATE, whole["text"])
    assert [w.word for w in words] == whole["text"].split() and all(w.aligned for w in words)
    assert all(a.end <= b.start + 1e-9 for a, b in zip(words, words[1:], strict=False))
    assert 0 <= words[0].start and words[-1].end <= samples.size / RATE


def test_words_the_dictionary_lacks_are_marked_not_invented():
    text = "Please call Zxqvbl and ask her to bring these things with her."
    words = align(recording(SENTENCES[1]), RATE, text)
    odd = [w for w in words if w.word == "Zxqvbl"]
    assert len(odd) == 1 and not odd[0].aligned
    before, after = words[1], words[3]
    assert before.end <= odd[0].start <= odd[0].end <= after.start  # the stretch between its neighbours
    noise = np.random.default_rng(0).normal(0, 0.1, RATE).astype(np.float32)
    assert all(not w.aligned and (w.start, w.end) == (0.0, 1.0) for w in align(noise, RATE, "hello there"))


@pytest.fixture(scope="module")
def speaking_worker(tiny_env):
    """A worker whose chunks sound like the fixture recordings of their texts (one sentence a chunk);
    crossfades of 200 ms,
    so a word time that left out a crossfade would be 200 ms off."""
    worker = Worker.from_env([*NATURAL, "chunking.crossfade_ms=200", "chunking.max_chars=70"])
    model = worker.store.get("1.7B-CustomVoice")

    def decode(items):
        return [recording(request.text.strip()) for request, _ in items]

    model.decode = decode
    yield worker
    del model.decode


def placed(audio: np.ndarray, text: str) -> float:
    """Where (seconds) the recording of `text` starts in `audio`: the lag of the best cross-correlation
    of the recording's spoken part with the file."""
    rec, words = recording(text), TRUTH[text]["words"]
    a, b = int(words[0]["start"] * RATE), int(words[-1]["end"] * RATE)
    score = correlate(audio, rec[a:b], mode="valid", method="fft")
    return (int(np.argmax(score)) - a) / RATE


JOB = {"segments": [{"text": f"{SENTENCES[0]} {SENTENCES[1]}", "voice": "male_1"},
                    {"text": SENTENCES[2], "voice": "female_1"}],
       "timestamps": "word", "output_format": "wav", "loudness_lufs": -20}


def test_word_times_in_the_file_match_where_the_words_landed(speaking_worker):
    answer = speaking_worker.handle({"id": "words", "input": JOB})
    assert "error" not in answer, answer
    meta = answer["metadata"]
    audio, rate = sf.read(io.BytesIO(base64.b64decode(answer["audio_base64"])), dtype="float32")
    assert rate == RATE and meta["words_unaligned"] == 0
    words = meta["words"]
    assert [(w["segment"], w["chunk"]) for w in words] == (
        [(0, 0)] * 9 + [(0, 1)] * len(SENTENCES[1].split()) + [(1, 0)] * len(SENTENCES[2].split()))
    expected = []
    for text in SENTENCES:
        at = placed(audio, text)
        expected += [{"word": w["word"], "start": at + w["start"], "end": at + w["end"]} for w in TRUTH[text]["words"]]
    found = errors(expected, words)
    print(f"word times in the file: mean {1000 * found.mean():.0f} ms, worst {1000 * found.max():.0f} ms")
    assert found.mean() <= 0.050 and found.max() <= 0.150
    assert all(0 <= w["start"] <= w["end"] <= meta["duration_seconds"] for w in words)
    for w, chunk_words in zip(words, [meta["segments"][w["segment"]]["chunks"][w["chunk"]] for w in words], strict=True):
        assert chunk_words["start"] <= w["start"] and w["end"] <= chunk_words["end"]


def test_at_another_speed_every_time_is_divided_by_it(speaking_worker):
    one = speaking_worker.handle({"id": "one", "input": {**JOB, "segments": JOB["segments"][1:]}})["metadata"]
    fast = speaking_worker.handle({"id": "fast", "input": {**JOB, "segments": JOB["segments"][1:], "speed": 1.25}})
    meta = fast["metadata"]
    assert [w["word"] for w in meta["words"]] == [w["word"] for w in one["words"]]
    for a, b in zip(one["words"], meta["words"], strict=True):
        assert b["start"] == pytest.approx(a["start"] / 1.25, abs=0.002)
    assert meta["words"][-1]["end"] <= meta["duration_seconds"] + 0.002


@pytest.mark.parametrize("fmt", ["srt", "vtt"])
def test_subtitles_parse_and_cover_the_words_in_order(speaking_worker, fmt):
    answer = speaking_worker.handle({"id": "subs", "input": {**JOB, "timestamps": None, "subtitles": fmt}})
    assert "words" not in answer["metadata"]  # subtitles asked, word times not: they stay out of the metadata
    text = base64.b64decode(answer["subtitles_base64"]).decode("utf-8")
    if fmt == "srt":
        cues = [(c.start.total_seconds(), c.end.total_seconds(), c.content) for c in srt.parse(text)]
    else:
        cues = [(c.start_time.in_milliseconds() / 1000, c.end_time.in_milliseconds() / 1000, c.text)
                for c in webvtt.from_buffer(io.StringIO(text))]
    duration = answer["metadata"]["duration_seconds"]
    spoken = " ".join(s["text"] for s in JOB["segments"]).split()
    assert " ".join(c[2] for c in cues).split() == spoken  # every word, in order
    for i, (start, end, content) in enumerate(cues):
        lines = content.split("\n")
        assert len(lines) <= 2 and all(len(line) <= 42 for line in lines), content
        assert 0 <= start < end <= duration + 0.001 and end - start <= 7.0
        if i + 1 < len(cues):
            assert end <= cues[i + 1][0]  # monotonic, never overlapping
            assert end - start >= 1.0 or end == cues[i + 1][0]  # at least 1 s unless the next cue starts


def test_chapters_in_the_mp3_and_the_metadata(speaking_worker):
    job = {**JOB, "timestamps": None, "output_format": "mp3", "chapters": True,
           "segments": [{**JOB["segments"][0], "chapter": "Opening"}, {**JOB["segments"][1], "chapter": "The bakery"}]}
    answer = speaking_worker.handle({"id": "chapters", "input": job})
    document = answer["metadata"]["chapters"]
    assert document["version"] == "1.2.0" and [c["title"] for c in document["chapters"]] == ["Opening", "The bakery"]
    second = answer["metadata"]["segments"][1]["start"]
    assert document["chapters"][0]["startTime"] == 0 and document["chapters"][1]["startTime"] == second
    data = base64.b64decode(answer["audio_base64"])
    read = [(round(start, 2), title) for start, title in chapters_by_ffmpeg(data)]
    assert read == [(0.0, "Opening"), (round(second, 2), "The bakery")]

    assert agrees(data, "mp3", answer["metadata"]["duration_seconds"])  # the tag leaves the audio as it was


def test_segment_times_work_in_a_language_the_aligner_does_not_speak(worker):
    answer = worker.handle({"id": "de", "input": {"text": "Guten Tag. Wie geht es Ihnen heute?", "timestamps": "segment",
                                                  "subtitles": "srt", "params": {"language": "de"}}})
    assert "error" not in answer, answer
    segment = answer["metadata"]["segments"][0]
    assert segment["text"] == "Guten Tag. Wie geht es Ihnen heute?" and all("text" in c for c in segment["chunks"])
    cues = list(srt.parse(base64.b64decode(answer["subtitles_base64"]).decode()))
    assert " ".join(c.content.replace("\n", " ") for c in cues).split() == segment["text"].split()


@pytest.mark.parametrize("payload, path, words", [
    ({"text": "Hallo.", "timestamps": "word", "params": {"language": "de"}}, "$.timestamps", "English only"),
    ({"text": "Hello.", "timestamps": "word", "stream": True}, "$.timestamps", "do not come with a stream"),
    ({"text": "Hello.", "timestamps": "words"}, "$.timestamps", "allowed: word, segment, null"),
    ({"text": "Hello.", "subtitles": "ass"}, "$.subtitles", "allowed: srt, vtt, null"),
])
def test_what_cannot_be_measured_is_refused_at_validation(worker, payload, path, words):
    answer = worker.handle({"id": "bad", "input": payload})
    assert answer["error"].startswith(f"Invalid input at {path}") and words in answer["error"], answer["error"]
