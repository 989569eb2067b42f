"""``when``: act at a named event of a run (textpipe.core.events), once a given checkpoint is on disk.

Apart from conftest.py so that tests/kill_runner.py, a process the tests start and often
kill with -9, can import it without conftest's module-level set-up: a folder that
process made would outlive it, since a killed process runs no atexit.
"""

import threading
from typing import Callable

from textpipe.core.events import listen


def when(event: str, action: Callable[[], object], after_checkpoint: int | None = None, **match) -> Callable[[], None]:
    """Run ``action()`` at the first ``event`` (textpipe.core.events) whose info holds the values of ``match``,
    once the checkpoint of step ``after_checkpoint`` (if given) is on disk: checkpoints are written by a
    background thread, and a crash meant to come after one must not race its write. Returns a function
    that stops listening.

    Example:
        >>> stop = when("step_done", lambda: os.kill(os.getpid(), signal.SIGKILL), after_checkpoint=15, step=16)
    """
    saved, fired = threading.Event(), []
    stops = [] if after_checkpoint is None else [listen("checkpoint_saved", lambda step, **_: step == after_checkpoint and saved.set())]
    if after_checkpoint is None:
        saved.set()

    def maybe_act(**info) -> None:
        if not fired and all(info.get(key) == value for key, value in match.items()):
            fired.append(True)
            if not saved.wait(120):
                raise RuntimeError(f"the checkpoint of step {after_checkpoint} never reached the disk")
            action()

    stops.append(listen(event, maybe_act))

    def stop_listening() -> None:
        for stop in stops:
            stop()

    return stop_listening


