"""qwen-tts, imported once and quietly, and the names tts-runner takes from it.

Importing qwen_tts prints two banners to the terminal that say nothing about a job: a boxed
"flash-attn is not installed" notice, and pysox's "SoX could not be found!" (the sox binary is only
used by the 25 Hz tokenizer, which tts-runner does not load). They are written by print() and by a
shell the import starts, so they are caught at the file-descriptor level while the import runs and
logged at DEBUG instead. Importing this module imports the library (seconds): the model store does it
when a model loads, so a command that only checks a job stays quick.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile

log = logging.getLogger(__name__)


def import_qwen_tts() -> None:
    """Import qwen_tts (and its model code) with its import-time banners kept out of our output."""
    if "qwen_tts.core.models.modeling_qwen3_tts" in sys.modules:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as caught:
        os.dup2(caught.fileno(), 1)
        os.dup2(caught.fileno(), 2)
        try:
            import qwen_tts  # noqa: F401
            import qwen_tts.core.models.modeling_qwen3_tts  # noqa: F401
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            caught.seek(0)
            said = " ".join(caught.read().decode(errors="replace").split())
            if said:
                log.debug("qwen_tts said at import: %s", said)


import_qwen_tts()

# qwen_tts logs "config is None, initializing defaults" at INFO on every call.
logging.getLogger("qwen_tts").setLevel(logging.WARNING)

from qwen_tts import Qwen3TTSModel  # noqa: E402
from qwen_tts.core.models.modeling_qwen3_tts import (  # noqa: E402
    apply_multimodal_rotary_pos_emb,
    apply_rotary_pos_emb,
)

__all__ = ["Qwen3TTSModel", "apply_multimodal_rotary_pos_emb", "apply_rotary_pos_emb", "import_qwen_tts"]
