"""``python -m textpipe`` and the ``textpipe`` command: :func:`textpipe.cli.main`, then the exit."""

import gc
import sys

from .cli import main


def run() -> None:
    status = main()
    # Python's exit ends with a garbage collection over every object still alive (torch's,
    # spaCy's, matplotlib's): 0.7 s of a 12 s `textpipe train` on mr. Frozen, they are skipped;
    # atexit handlers, output buffers and reference-counted objects are cleaned up as before.
    gc.freeze()
    sys.exit(status)


if __name__ == "__main__":
    run()
