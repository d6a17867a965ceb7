"""`python -m tts_runner`: the command line (tts_runner/edge/cli.py)."""

import sys

from tts_runner.edge.cli import cli

if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
