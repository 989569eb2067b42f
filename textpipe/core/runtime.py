"""Where and how a training process runs: the device, the ranks, and the process-wide settings of a run.

- :class:`RunContext`: what :func:`textpipe.core.train.fit` needs to know about its process,
  resolved once by the caller (device, rank and world size, quiet, the checkpoint store,
  the checkpoint to resume from, the signal catcher).
- :func:`run_scope` (:func:`deterministic_algorithms` + :class:`StopOnSignal`): the
  process-wide switches a run may flip (torch's deterministic algorithms, SIGINT/SIGTERM
  handlers), on for a ``with`` block and put back as they were on exit. Library code never
  flips them outside such a block: a notebook that calls ``fit`` keeps its own settings.
- :class:`RunSignals`: around a whole run, SIGINT/SIGTERM between the training loops raise
  :class:`Interrupted` at once (every file is written whole, so the disk holds the last good
  state); :func:`held_signals` keeps a block that must not stop halfway (the commit) whole.
- :class:`Placement` and :func:`start_distributed`: this process's rank, world and device (torchrun).
- :func:`set_seed`, :func:`resolve_device`, :func:`distributed_wrap`: the rest of a process's setup.

Part of the tensor core: imports torch and the standard library only.

Example:
    >>> with run_scope(deterministic=True) as stop:
    ...     context = RunContext.resolve("auto", checkpoints=CheckpointStore("runs/x/checkpoints"), stop=stop)
    ...     fit(model, train_loader, dev_loader, TrainConfig(), num_classes=2, context=context)
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import nn

from .checkpoint import CheckpointStore


class Interrupted(Exception):
    """A run stopped by SIGINT or SIGTERM (``signal_name``); what it had finished is on disk, ready for a resume."""

    def __init__(self, signal_name: str, message: str):
        self.signal_name = signal_name
        super().__init__(message)


class StopOnSignal:
    """While entered, the first SIGINT or SIGTERM is noted (a :func:`fit` given this object in its
    :class:`RunContext` stops at the next step boundary, after a checkpoint); a second one
    interrupts at once. The previous handlers are put back on exit, and a signal noted but not
    acted on (it came after the last step) is sent again to them. Outside the main thread
    (where Python cannot install handlers) it installs nothing and never fires.

    Example:
        >>> with StopOnSignal() as stop:
        ...     fit(model, train_loader, dev_loader, config, num_classes=2, context=RunContext(stop=stop))
    """

    def __init__(self):
        self.signal_name: str | None = None
        self.handled = False
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.signal_name is not None:  # the user insists: no checkpoint now, the newest one stays
            name = signal.Signals(signum).name
            raise Interrupted(name, f"{name}: training stopped at once (a second signal); the newest checkpoint is kept")
        self.signal_name = signal.Signals(signum).name

    def acted_on(self) -> str:
        """The signal's name, marked as handled (training stopped for it): not sent again on exit."""
        self.handled = True
        return self.signal_name

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, kind, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        if kind is None and self.signal_name is not None and not self.handled:  # never dropped: the caller's handler decides
            signal.raise_signal(signal.Signals[self.signal_name])


class RunSignals:
    """While entered (around a whole run, in the main thread), SIGINT or SIGTERM raises
    :class:`Interrupted` wherever the run is: every file of a run is written whole or not at all,
    so the disk holds the last good state and a resume continues from it. Inside :func:`fit`,
    its :class:`StopOnSignal` takes over (a checkpoint first); inside :func:`held_signals`, the
    signal waits for the block's ``stop_here()``. ``where``: the folder named in the message (None: nothing is saved yet).

    Example:
        >>> with RunSignals("runs/mine/.textpipe-run"):
        ...     ...  # a SIGTERM here raises Interrupted("SIGTERM", ...)
    """

    def __init__(self, where: object):
        self.where, self.held, self.pending = where, 0, None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.held:
            self.pending = self.pending or name
            return
        self.stop(name)

    def stop(self, name: str) -> None:
        if self.where is None:
            raise Interrupted(name, f"{name}: the run stopped before it saved anything")
        raise Interrupted(name, f"{name}: the run stopped; what it had finished is saved in {self.where}")

    def __enter__(self) -> "RunSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
            _ACTIVE.append(self)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self._previous:
            _ACTIVE.remove(self)
        self._previous = {}


_ACTIVE: list[RunSignals] = []


@contextlib.contextmanager
def held_signals() -> Iterator[Callable[[], None]]:
    """``with held_signals() as stop_here``: a SIGINT or SIGTERM inside waits for the next
    ``stop_here()``, which raises it; one that comes after the last ``stop_here()`` is dropped
    (the work it would have stopped is done). A no-op outside :class:`RunSignals`.

    Example:
        >>> with held_signals() as stop_here:
        ...     move_every_file()
        ...     stop_here()   # a signal that came during the moves stops the run here
        ...     remove_the_staging_folder()
    """
    guard = _ACTIVE[-1] if _ACTIVE else None
    if guard is None:
        yield lambda: None
        return

    def stop_here() -> None:
        if guard.pending:
            name, guard.pending = guard.pending, None
            guard.stop(name)

    guard.held += 1
    try:
        yield stop_here
    finally:
        guard.held -= 1
        guard.pending = None


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool = True) -> Iterator[None]:
    """``torch.use_deterministic_algorithms(True)`` inside the block (when ``enabled``); the previous setting after it.

    Example:
        >>> with deterministic_algorithms(config.deterministic):
        ...     fit(model, train_loader, dev_loader, config, num_classes=2)
    """
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    if enabled:
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


@contextlib.contextmanager
def run_scope(deterministic: bool = False) -> Iterator[StopOnSignal]:
    """The process-wide settings of a training run, for the block only: deterministic algorithms
    when asked (``TrainConfig.deterministic``) and a :class:`StopOnSignal` (yielded, for
    :class:`RunContext`'s ``stop``).

    Example:
        >>> with run_scope(config.deterministic) as stop:
        ...     fit(model, train_loader, dev_loader, config, num_classes=2, context=RunContext.resolve(config.device, stop=stop))
    """
    with deterministic_algorithms(deterministic), StopOnSignal() as stop:
        yield stop


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> cuda when available, else cpu; any other name as torch spells it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class RunContext:
    """How one training run runs, resolved once by its caller and handed to :func:`fit`.

    Example:
        >>> store = CheckpointStore("runs/mine/checkpoints", keep=2)
        >>> context = RunContext.resolve("auto", checkpoints=store, resume=store.load_latest())
        >>> fit(model, train_loader, dev_loader, config, num_classes=2, context=context)
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rank: int = 0  # this process's rank under torchrun, and how many there are
    world_size: int = 1
    quiet: bool = False  # no progress bar and no epoch lines on the "textpipe" logger
    checkpoints: CheckpointStore | None = None  # where to save the training state (None: nowhere)
    resume: dict | None = None  # a state read back by CheckpointStore.load_latest(): continue from it
    stop: StopOnSignal | None = None  # entered by the caller: a caught signal stops the run after a checkpoint

    @classmethod
    def resolve(cls, device: str = "cpu", quiet: bool = False, **settings) -> "RunContext":
        """``device`` resolved (``"auto"``; under torchrun, cuda is the ``LOCAL_RANK``-th GPU), the rank
        and world size of a running process group, ``quiet`` on every rank but 0; ``settings`` as given."""
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if distributed else (0, 1)
        resolved = resolve_device(device)
        if resolved.type == "cuda" and world > 1 and resolved.index is None:
            resolved = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return cls(resolved, rank, world, quiet or rank != 0, **settings)


def set_seed(seed: int) -> None:
    """Seed Python's and torch's generators (the DataLoader order is seeded by the dataset)."""
    random.seed(seed)
    torch.manual_seed(seed)


def distributed_wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` when a process group is running (torchrun), else ``model`` itself."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def join_uneven_inputs(model: nn.Module) -> contextlib.AbstractContextManager:
    """``Join`` for a DDP model, so ranks may get one batch more or fewer in an epoch: the
    ranks that ran out shadow the gradient all-reduce of the others instead of hanging."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        from torch.distributed.algorithms.join import Join

        return Join([model])
    return contextlib.nullcontext()


@dataclass(frozen=True)
class Placement:
    """This process's place in the run: its rank among ``world`` processes and its device. Only rank 0 writes files.

    Example:
        >>> start_distributed("cpu")   # outside torchrun
        Placement(rank=0, world=1, device=device(type='cpu'))
    """

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def writes(self) -> bool:
        return self.rank == 0


def start_distributed(device: str) -> Placement:
    """The one place the process group starts: under ``torchrun`` (its WORLD_SIZE / RANK /
    LOCAL_RANK variables), gloo on cpu and nccl on cuda, each rank on its own GPU."""
    world, resolved = int(os.environ.get("WORLD_SIZE", "1")), resolve_device(device)
    if world == 1:
        return Placement(0, 1, resolved)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if resolved.type == "cuda" else "gloo")
    if resolved.type == "cuda":
        resolved = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return Placement(torch.distributed.get_rank(), world, resolved)


def under_torchrun() -> bool:
    """Whether this process is one of several ranks (torchrun's WORLD_SIZE over 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextlib.contextmanager
def distributed_scope(device: str) -> Iterator[Placement]:
    """:func:`start_distributed`, and on the way out the process group destroyed if this call started it
    (a caller's own group is left to the caller).

    Example:
        >>> with distributed_scope("cpu") as placement:
        ...     placement.writes
        True
    """
    started = under_torchrun() and not torch.distributed.is_initialized()
    placement = start_distributed(device)
    try:
        yield placement
    finally:
        if started and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
