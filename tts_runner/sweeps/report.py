"""The sweep report: one page that compares the runs of a multirun.

    python -m tts_runner.report DIR       (re)build DIR/report.html and DIR/report.csv

A Hydra callback (`ReportCallback`, in conf/cli.yaml) builds it at the end of every multirun. Each run
folder under DIR (one with a result.json) becomes a row: the overrides that vary across the runs,
the audio's duration, real-time factor and generation time, retries and runaways, loudness (LUFS,
ITU-R BS.1770), and two scores computed offline from models that ship inside pip packages:

- DNSMOS (`speechmos`, Microsoft's ONNX models): an estimate of how a listener would rate the
  audio's quality, 1 to 5 (overall, and of the speech alone);
- alignment (`pocketsphinx`, its bundled en-US model, English only): whether each chunk's text can
  be force-aligned to its stretch of audio (the chunk places of the metadata; no path through the
  words means the audio does not say them). Words the dictionary lacks are left out of the text.

Per run the page has an audio player, a waveform and a spectrogram (matplotlib), and the text; the
table sorts by any column (a click on its head, or `#sort=column` in the address). Everything is
beside the page, referenced by relative paths: it opens from disk, with no network. With random
weights (the model folder says so) every score is meaningless, and the page says that first.
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import json
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hydra.experimental.callback import Callback

from tts_runner.captions import align
from tts_runner.serving.store import RANDOM_MARKER

log = logging.getLogger(__name__)

SCORE_RATE = 16000  # what DNSMOS takes (and the aligner, which resamples on its own)
COLUMNS = ("run", "duration_s", "rtf", "generation_s", "retries", "runaways", "voice_min", "lufs", "dnsmos_ovrl",
           "dnsmos_sig", "aligned")


@dataclass
class Run:
    name: str                 # the run folder, relative to the sweep folder
    overrides: dict[str, str]
    metadata: dict
    texts: list[str]          # each segment's text
    language: str
    audio: Path | None
    random_weights: bool
    max_chars: int = 0        # chunking.max_chars of the run
    scores: dict = field(default_factory=dict)

    def chunk_spans(self) -> list[tuple[tuple[float, float], str]]:
        """Each chunk's (start, end) in the file and its text: the metadata's places, the texts split
        as the job split them (a segment whose chunks do not match goes whole)."""
        from tts_runner.job.chunking import split_text

        segments = self.metadata.get("segments") or [{"start": 0.0, "end": self.metadata.get("duration_seconds", 0)}]
        out = []
        for segment, text in zip(segments, self.texts, strict=False):
            texts = split_text(text, self.max_chars) if self.max_chars else [text]
            chunks = segment.get("chunks") or []
            if len(chunks) == len(texts):
                out += [((c["start"], c["end"]), t) for c, t in zip(chunks, texts, strict=True)]
            else:
                out.append(((segment["start"], segment["end"]), text))
        return out

    def row(self, varying: list[str]) -> dict:
        m = self.metadata
        duration, took = m.get("duration_seconds") or 0.0, m.get("generation_time_seconds") or 0.0
        return {"run": self.name, **{k: self.overrides.get(k, "") for k in varying},
                "duration_s": duration, "rtf": round(duration / took, 2) if took else "",
                "generation_s": took, "retries": m.get("retries", ""), "runaways": m.get("runaways", ""),
                "voice_min": self.voice_min(), **self.scores}

    def voice_min(self) -> float | str:
        """The lowest voice consistency of any chunk of the run (the metadata's, when it was scored)."""
        scored = [s["voice_consistency"]["min"] for s in self.metadata.get("segments") or [] if "voice_consistency" in s]
        return min(scored) if scored else ""


def find_runs(sweep: Path) -> list[Run]:
    runs = []
    for result in sorted(sweep.rglob("result.json"), key=lambda p: [int(x) if x.isdigit() else x for x in p.parts]):
        folder = result.parent
        record = json.loads(result.read_text())
        config = record.get("config", {})
        job = config.get("input", {})
        texts = [job["text"]] if job.get("text") else [s["text"] for s in job.get("segments") or []]
        overrides = {}
        listed = folder / ".hydra" / "overrides.yaml"
        if listed.is_file():
            import yaml

            for item in yaml.safe_load(listed.read_text()) or []:
                key, _, value = str(item).partition("=")
                overrides[key.lstrip("+~")] = value
        audio = Path(record["audio_path"]) if record.get("audio_path") else None
        models = config.get("models", {})
        variant = models.get("variants", {}).get(job.get("model"), {})
        marker = Path(models.get("dir", "")) / variant.get("folder", "") / RANDOM_MARKER
        runs.append(Run(str(folder.relative_to(sweep)), overrides, record.get("metadata", {}), texts,
                        str(job.get("language", "")), audio if audio and audio.is_file() else None,
                        bool(variant) and marker.is_file(), int(config.get("chunking", {}).get("max_chars") or 0)))
    return runs


def varying_keys(runs: list[Run]) -> list[str]:
    keys = sorted({k for r in runs for k in r.overrides})
    return [k for k in keys if len({r.overrides.get(k) for r in runs}) > 1]


# ---- scores --------------------------------------------------------------------------------------
def read_audio(path: Path) -> tuple[np.ndarray, int]:
    from tts_runner.audio import formats

    fmt = path.suffix.lstrip(".")
    samples, rate = formats.read(path.read_bytes(), "wav" if fmt in ("wav", "flac", "ogg", "opus") else fmt)
    return np.asarray(samples, dtype=np.float32).reshape(-1), int(rate)


def dnsmos(samples: np.ndarray, rate: int) -> dict:
    """DNSMOS P.835 (overall, signal) of mono audio, through speechmos's ONNX models at 16 kHz."""
    import librosa
    from speechmos import dnsmos as model

    audio16 = np.clip(librosa.resample(samples, orig_sr=rate, target_sr=SCORE_RATE), -1.0, 1.0)
    scores = model.run(audio16, sr=SCORE_RATE)
    return {"dnsmos_ovrl": round(float(scores["ovrl_mos"]), 2), "dnsmos_sig": round(float(scores["sig_mos"]), 2)}


def aligns(samples: np.ndarray, rate: int, text: str) -> bool | None:
    """Can `text` be force-aligned to this audio (tts_runner/captions/align.py, the aligner of word
    timestamps)? None when no word of it is in the aligner's dictionary."""
    if not align.known(text):
        return None
    return any(w.aligned for w in align.align(samples, rate, text))


def score(run: Run, samples: np.ndarray, rate: int) -> None:
    """The run's DNSMOS and alignment, from its audio (resampled once to the 16 kHz both models take)."""
    import librosa

    samples, rate = librosa.resample(samples, orig_sr=rate, target_sr=SCORE_RATE), SCORE_RATE
    try:
        run.scores.update(dnsmos(samples, rate))
    except Exception as exc:  # noqa: BLE001 - a score that cannot be had is left empty, said in the log
        log.warning("DNSMOS failed for %s: %s", run.name, exc)
    if run.language.lower() in ("en", "english", "auto"):
        results = [aligns(samples[int(a * rate): int(b * rate)], rate, text) for (a, b), text in run.chunk_spans()]
        known = [r for r in results if r is not None]
        run.scores["aligned"] = f"{sum(known)}/{len(known)}" if known else ""


# ---- pictures and the page -----------------------------------------------------------------------
def pictures(run: Run, samples: np.ndarray, rate: int, folder: Path) -> tuple[str, str]:
    """A waveform and a spectrogram of the run's audio, as PNG files in `folder`; their names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", run.name)
    names = (f"{stem}-wave.png", f"{stem}-spectrogram.png")
    t = np.arange(samples.size) / rate
    fig, ax = plt.subplots(figsize=(6, 1.4), dpi=80)
    ax.plot(t, samples, linewidth=0.4)
    ax.set_xlim(0, max(t[-1] if t.size else 1, 1e-3))
    ax.set_ylim(-1, 1)
    ax.set_xlabel("s")
    fig.tight_layout()
    fig.savefig(folder / names[0])
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 1.8), dpi=80)
    if samples.size >= 512:
        ax.specgram(samples, NFFT=512, Fs=rate, noverlap=384, cmap="magma")
    ax.set_xlabel("s")
    ax.set_ylabel("Hz")
    fig.tight_layout()
    fig.savefig(folder / names[1])
    plt.close(fig)
    return names


SORT_SCRIPT = """
function sortBy(col, flip) {
  const table = document.getElementById('runs'); const body = table.tBodies[0];
  const heads = Array.from(table.tHead.rows[0].cells); const i = heads.findIndex(h => h.dataset.col === col);
  if (i < 0) return;
  const dir = flip && table.dataset.sorted === col && table.dataset.dir === 'asc' ? 'desc' : 'asc';
  const key = r => { const t = r.cells[i].dataset.value ?? r.cells[i].textContent; const n = parseFloat(t);
                     return isNaN(n) ? t : n; };
  const rows = Array.from(body.rows).sort((a, b) => { const x = key(a), y = key(b);
    return (x < y ? -1 : x > y ? 1 : 0) * (dir === 'asc' ? 1 : -1); });
  rows.forEach(r => body.appendChild(r)); table.dataset.sorted = col; table.dataset.dir = dir;
}
document.querySelectorAll('#runs th').forEach(h => h.addEventListener('click', () => sortBy(h.dataset.col, true)));
const wanted = new URLSearchParams(location.hash.slice(1)).get('sort'); if (wanted) sortBy(wanted, false);
const loaded = document.getElementById('loaded');
const audios = Array.from(document.querySelectorAll('audio'));
function tally() { loaded.textContent = audios.map(a => a.dataset.run + '=' + (a.duration || 0).toFixed(2)).join(' '); }
audios.forEach(a => { a.addEventListener('loadedmetadata', tally); a.load(); });
tally();
"""


def words_strip(metadata: dict) -> str:
    """A run's word times (timestamps: word), each word placed under the waveform where it starts,
    its start and end in its tooltip; nothing when the run has none."""
    words, duration = metadata.get("words"), metadata.get("duration_seconds") or 0
    if not words or duration <= 0:
        return ""
    spans = "".join(f"<span class=\"word{'' if w.get('aligned', True) else ' unaligned'}\" "
                    f"style=\"left:{100 * w['start'] / duration:.2f}%\" title=\"{w['start']:.2f} to {w['end']:.2f} s\">"
                    f"{html.escape(w['word'])}</span>" for w in words)
    return f"<div class=\"words\" aria-label=\"word times\">{spans}</div>"


def page(runs: list[Run], varying: list[str], images: dict[str, tuple[str, str]], sweep: Path) -> str:
    esc = html.escape
    columns = ["run", *varying, *COLUMNS[1:]]
    head = "".join(f'<th data-col="{esc(c)}" title="click to sort">{esc(c)}</th>' for c in columns)
    body = []
    for run in runs:
        row = run.row(varying)
        cells = "".join(f'<td data-value="{esc(str(row.get(c, "")))}">{esc(str(row.get(c, "")))}</td>' for c in columns)
        body.append(f"<tr>{cells}</tr>")
    same_text = len({tuple(r.texts) for r in runs}) == 1
    warning = ""
    if any(r.random_weights for r in runs):
        warning = ('<p class="warn"><b>Random weights.</b> These runs used a model with random weights (built by '
                   "tts_runner.tools.tiny_model): its audio is noise, and every score below is meaningless. On real "
                   "weights the scores rank the settings.</p>")
    cards = []
    for run in runs:
        if run.audio is None:
            continue
        rel = run.audio.relative_to(sweep) if run.audio.is_relative_to(sweep) else run.audio
        wave, spec = images.get(run.name, ("", ""))
        text = "" if same_text else f"<p class='text'>{esc(' / '.join(run.texts))}</p>"
        where = ", ".join(f"{esc(k)}={esc(run.overrides.get(k, ''))}" for k in varying) or esc(run.name)
        cards.append(f"<section><h3>{esc(run.name)}: {where}</h3>"
                     f"<audio controls preload=\"metadata\" data-run=\"{esc(run.name)}\" src=\"{esc(str(rel))}\"></audio>"
                     f"<img alt=\"waveform\" src=\"{esc(wave)}\">{words_strip(run.metadata)}"
                     f"<img alt=\"spectrogram\" src=\"{esc(spec)}\">{text}</section>")
    shared = f"<p class='text'><b>Text</b> (every run): {esc(' / '.join(runs[0].texts))}</p>" if runs and same_text else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sweep report: {esc(sweep.name)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }} table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }} th {{ cursor: pointer; background: #eee; }}
.warn {{ background: #fff3cd; padding: 0.6em; border: 1px solid #e0b000; }} section {{ margin: 1em 0; }}
img {{ display: block; max-width: 100%; }} .words {{ position: relative; height: 2.6em; max-width: 480px; font-size: 0.7em; }}
.word {{ position: absolute; white-space: nowrap; }} .word:nth-child(even) {{ top: 1.3em; }} .unaligned {{ color: #b00; }} .text {{ max-width: 60em; }} #loaded {{ color: #888; font-size: 0.8em; }}
</style></head><body>
<h1>Sweep report: {esc(str(sweep))}</h1>
{warning}
<p>{len(runs)} runs. Columns: the overrides that vary; duration (s); real-time factor (audio s / generation s);
generation time (s); retries and runaways; voice_min: the lowest voice consistency of any chunk (speaker-embedding
cosine against its segment's reference or first chunk); loudness (LUFS, BS.1770); DNSMOS overall and signal (1-5, speechmos);
aligned: chunks whose text pocketsphinx could force-align to their audio (English). Click a column to sort.</p>
{shared}
<table id="runs"><thead><tr>{head}</tr></thead><tbody>
{chr(10).join(body)}
</tbody></table>
<p id="loaded"></p>
{chr(10).join(cards)}
<script>{SORT_SCRIPT}</script>
</body></html>
"""


def build(sweep: Path, scores: bool = True) -> tuple[Path, Path]:
    """Write report.html and report.csv into `sweep` (pictures in sweep/report/); return their paths."""
    from tts_runner.audio import dsp as audio

    sweep = Path(sweep).resolve()
    runs = find_runs(sweep)
    varying = varying_keys(runs)
    folder = sweep / "report"
    folder.mkdir(exist_ok=True)
    images = {}
    for run in runs:
        if run.audio is None:
            continue
        samples, rate = read_audio(run.audio)  # once, for the scores and the pictures
        run.scores["lufs"] = round(audio.loudness(samples, rate), 1) if samples.size else ""
        if scores:
            score(run, samples, rate)
        images[run.name] = tuple(f"report/{name}" for name in pictures(run, samples, rate, folder))
    out_html = sweep / "report.html"
    out_html.write_text(page(runs, varying, images, sweep))
    out_csv = sweep / "report.csv"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["run", *varying, *COLUMNS[1:]], extrasaction="ignore")
    writer.writeheader()
    for run in runs:
        writer.writerow(run.row(varying))
    out_csv.write_text(buffer.getvalue())
    return out_html, out_csv


class ReportCallback(Callback):
    """Hydra callback: the report of a multirun, built when it ends (conf/cli.yaml). `scores: false`
    leaves out DNSMOS and the alignment (quicker; `python -m tts_runner.sweeps.report DIR` adds them later)."""

    def __init__(self, scores: bool = True) -> None:
        self.scores = bool(scores)

    def on_multirun_end(self, config, **kwargs) -> None:
        from tts_runner.sweeps import runs as sweeps

        failed = sweeps.wait()  # a batched sweep's runs go on past their launch
        sweep = Path(config.hydra.sweep.dir)
        if failed:
            log.error("%d run(s) of the sweep failed (each said why above)", failed)
        try:
            out_html, _ = build(sweep, scores=self.scores)
        except Exception as exc:  # noqa: BLE001 - the runs are done and kept; the report can be rebuilt
            log.error("The sweep report could not be built (%s: %s); rebuild it with python -m tts_runner.report %s",
                      type(exc).__name__, exc, sweep)
        else:
            print(f"sweep report: {out_html}")
        if failed:
            raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build report.html and report.csv for a sweep folder.")
    parser.add_argument("sweep", type=Path, help="the multirun folder (multirun/<date>/<time>)")
    parser.add_argument("--no-scores", action="store_true", help="skip DNSMOS and alignment (quicker; loudness stays)")
    args = parser.parse_args(argv)
    if not args.sweep.is_dir() or not any(args.sweep.rglob("result.json")):
        print(f"{args.sweep}: no runs here (no result.json below it)", file=sys.stderr)
        return 2
    out_html, out_csv = build(args.sweep, scores=not args.no_scores)
    print(f"wrote {out_html} and {out_csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
