"""`python -m tts_runner.report DIR`: (re)build a sweep's report (tts_runner/sweeps/report.py)."""

import sys

from tts_runner.sweeps.report import main

if __name__ == "__main__":
    sys.exit(main())
