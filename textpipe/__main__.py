"""``python -m textpipe`` and the ``textpipe`` command: :func:`textpipe.cli.main`, then the exit."""

import atexit
import gc
import os
import sys
import threading

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
    if _only_this_thread():
        quick_exit(status)
    sys.exit(status)


def quick_exit(status: int) -> None:
    """The atexit handlers (temporary folders removed, a child process stopped, logs flushed), then the end, without
    the interpreter tearing down every module and tensor one by one: 0.5 to 0.9 s of a training run on mr, for nothing
    the process still needs (docs/benchmarks.md, "Speed at scale"). Every file textpipe writes is closed by then."""
    atexit._run_exitfuncs()
    os._exit(status if _flushed() else 120)  # 120: what Python's own exit returns when its output cannot be written


def _only_this_thread() -> bool:
    """No thread besides this one that Python would wait for at exit."""
    return all(t.daemon for t in threading.enumerate() if t is not threading.main_thread())


def _flushed() -> bool:
    """stdout and stderr written out; False when a reader went away."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        return True
    except (OSError, ValueError):
        return False


if __name__ == "__main__":
    run()
