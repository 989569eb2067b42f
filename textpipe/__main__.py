"""``python -m textpipe`` and the ``textpipe`` command: :func:`textpipe.cli.main`, then the exit."""

import gc
import sys

# Young objects collected every 20,000 allocations, not 700: importing torch and spaCy makes some
# 200k objects that all live on, which the default walks again and again, and predicting a block of
# rows makes and drops thousands of small containers (the cost: docs/benchmarks.md, "Choices in the code").
gc.set_threshold(20_000, 10, 10)

from .cli import main  # noqa: E402


def run() -> None:
    status = main()
    # Python's exit ends with a garbage collection over every object still alive (torch's, spaCy's,
    # matplotlib's). Frozen, they are skipped; atexit handlers, output buffers and reference-counted
    # objects are cleaned up as without it.
    gc.freeze()
    sys.exit(status)


if __name__ == "__main__":
    run()
