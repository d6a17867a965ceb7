"""Break the engines' sampler (tts_runner/engines/draw.py) on purpose, one way at a time, and show that the distribution
test (tests/unit/engines/test_distribution.py) fails for each: `python scripts/sampler_mutants.py`.
The source file is restored afterwards, whatever happens."""

import os
import subprocess
import sys
from pathlib import Path

PATH = Path(__file__).resolve().parents[1] / "tts_runner" / "engines" / "draw.py"
MUTANTS = {  # name: (text in draw.py, what it becomes)
    "temperature ignored": ("    warped = scores / temperature\n", "    warped = scores\n"),
    "subtalker settings swapped": ('sampling["subtalker_top_k"], sampling["subtalker_top_p"], sampling["seed"]',
                                   'sampling["top_k"], sampling["top_p"], sampling["seed"]'),
    "penalty ignored": ("    scores = torch.where(seen, torch.where(scores < 0, scores * penalty, scores / penalty), "
                        "scores)\n", ""),
    "floor ignored": ('    end.masked_fill_(frame < sampling["min_new_tokens"], float("-inf"))', "    pass"),
    "suppression ignored": ('    scores = scores.masked_fill(blocked, float("-inf"))\n', ""),
}


def main() -> int:
    original = PATH.read_text()
    survived = []
    try:
        for name, (before, after) in MUTANTS.items():
            assert original.count(before) == 1, f"{name}: the text to change is not in {PATH.name}"
            PATH.write_text(original.replace(before, after))
            out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:warnings",
                                  "tests/unit/engines/test_distribution.py"], capture_output=True, text=True,
                                 cwd=PATH.parents[2], env=os.environ).stdout
            failed = [line.split("[", 1)[1].rstrip("]") for line in out.splitlines() if line.startswith("FAILED")]
            print(f"{name}: {out.strip().splitlines()[-1]}" + "".join(f"\n    {f}" for f in failed), flush=True)
            if not failed:
                survived.append(name)
    finally:
        PATH.write_text(original)
    print("every mutant failed the test" if not survived else f"SURVIVED: {', '.join(survived)}")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
