"""``python -m textpipe`` and the ``textpipe`` command: :func:`textpipe.cli.main`, then the exit."""

import gc
import sys

# Young objects collected every 20,000 allocations, not 700: importing torch and spaCy makes some
# 200k objects that all live on, which the default walked again and again (0.1 s of every command),
# and predicting a block of rows makes and drops thousands of small containers (0.1 s of 100k rows).
gc.set_threshold(20_000, 10, 10)

from .cli import main  # noqa: E402


def run() -> None:
    status = main()
    # Python's exit ends with a garbage collection over every object still alive (torch's,
    # spaCy's, matplotlib's): 0.7 s of a 12 s `textpipe train` on mr. Frozen, they are skipped;
    # atexit handlers, output buffers and reference-counted objects are cleaned up as before.
    gc.freeze()
    sys.exit(status)


if __name__ == "__main__":
    run()
