"""torch's optimizers without the import of ``torch._dynamo`` (about 2 s of every run): NoDynamoImport, LBFGS.

torch 2.3 wraps some ``Optimizer`` methods in ``torch._disable_dynamo``, which imports
``torch._dynamo`` (and sympy) on its first call; ``add_param_group`` is one, and every
optimizer's ``__init__`` calls it. That import took 1.7 to 2.3 s on the 2-core benchmark
machine, a twentieth of a whole run on mr. The wrapper only matters under
``torch.compile``, which textpipe never uses; here the same methods run unwrapped (their
``__wrapped__``): the same code, the same results, without the import.

Part of the tensor core: imports torch only.

Example:
    >>> weights = torch.zeros(3, requires_grad=True)
    >>> optimizer = LBFGS([weights], lr=1, max_iter=20)   # torch.optim.LBFGS, torch._dynamo not imported
"""

from __future__ import annotations

from typing import Callable

import torch


def unwrapped(method: Callable) -> Callable:
    """``method`` without its ``torch._disable_dynamo`` wrapper (as it is, on a torch without one)."""
    return getattr(method, "__wrapped__", method)


class NoDynamoImport:
    """A mixin, first among an optimizer's bases: ``torch.optim.Optimizer``'s dynamo-wrapped methods, unwrapped.

    Example:
        >>> class Mine(NoDynamoImport, torch.optim.SGD): ...
        >>> Mine([torch.zeros(2, requires_grad=True)], lr=0.1).zero_grad()
    """

    def add_param_group(self, param_group: dict) -> None:
        unwrapped(torch.optim.Optimizer.add_param_group)(self, param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        unwrapped(torch.optim.Optimizer.zero_grad)(self, set_to_none)

    def state_dict(self) -> dict:
        return unwrapped(torch.optim.Optimizer.state_dict)(self)

    def load_state_dict(self, state_dict: dict) -> None:
        unwrapped(torch.optim.Optimizer.load_state_dict)(self, state_dict)


class LBFGS(NoDynamoImport, torch.optim.LBFGS):
    """``torch.optim.LBFGS``, built without importing ``torch._dynamo``; the same steps.

    Example:
        >>> optimizer = LBFGS([torch.zeros(3, requires_grad=True)], lr=1, line_search_fn="strong_wolfe")
    """
