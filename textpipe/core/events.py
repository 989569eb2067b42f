"""Named points of a training run that tests and tools can hook into, by name rather than by call count.

Library code announces where it is (``emit("step_done", step=17)``); a listener registered with
:func:`listen` runs there, in the same thread, before the code goes on. The kill/resume tests
crash a run at exact points this way ("after step 17", "while checkpoint 3 is written"), and a
rename of an internal function cannot move the point without a test failing.

Imports the standard library only (part of the tensor core's allowed imports).

Example:
    >>> stop = listen("step_done", lambda step, **_: print("finished step", step))
    >>> emit("step_done", step=1)
    finished step 1
    >>> stop()
"""

from __future__ import annotations

from typing import Callable

_LISTENERS: dict[str, list[Callable[..., object]]] = {}


def listen(name: str, listener: Callable[..., object]) -> Callable[[], None]:
    """Call ``listener(**info)`` at every ``emit(name, **info)``; returns a function that stops it."""
    _LISTENERS.setdefault(name, []).append(listener)
    return lambda: _LISTENERS[name].remove(listener)


def emit(name: str, **info) -> None:
    """Announce that the run reached the point ``name``; a no-op when nobody listens."""
    for listener in tuple(_LISTENERS.get(name, ())):
        listener(**info)
