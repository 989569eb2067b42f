"""Optimizers and learning-rate schedules for the training loop: what ``optimizer.step()`` does here.

- :func:`make_optimizers` splits a model's parameters by identity: ``sparse=True``
  embedding tables go to :class:`RowAdam` (lazy Adam on the rows a batch used),
  everything else to :class:`DenseAdamW` (``torch.optim.AdamW``, in one C loop on a CPU).
- :func:`lr_factor` / :func:`make_schedulers`: the learning rate per epoch or per
  step (warmup, linear decay), as ``LambdaLR`` schedulers whose state a checkpoint keeps.
- :func:`clip_grad_norm`: gradient clipping that counts sparse gradients too.

Part of the tensor core: imports torch only.

Example:
    >>> optimizers = make_optimizers(model, TrainConfig(lr=1e-3))
    >>> schedulers = make_schedulers(optimizers, TrainConfig(schedule="linear"), steps_per_epoch=0)
    >>> loss.backward(); clip_grad_norm(model.parameters(), 1.0); [opt.step() for opt in optimizers]
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Iterable

import torch
from torch import nn

from .kernels import SQRT_MODE, can_use, row_kernels, torch_sqrt
from .no_dynamo import NoDynamoImport

if TYPE_CHECKING:  # only for the type hints: train.py imports this module
    from .train import TrainConfig

SCHEDULES = ("linear", "constant", "linear_steps")


class RowAdam(NoDynamoImport, torch.optim.Optimizer):
    """Adam for ``sparse=True`` embedding tables: only the rows a batch used are updated.

    The same "lazy" Adam as ``torch.optim.SparseAdam`` (each used row's moments
    and weights step as in Adam; unused rows stay as they are), computed with
    dense ``index_select`` / ``index_add_`` on the used rows instead of
    sparse-tensor arithmetic, which is much slower on a CPU. On a CPU with a C
    compiler the step is one compiled loop over the used rows
    (:mod:`textpipe.core.kernels`), with the same arithmetic and the same weights.

    Example:
        >>> table = nn.Embedding(1000, 16, sparse=True)
        >>> optimizer = RowAdam(table.parameters(), lr=1e-3)
        >>> table(torch.tensor([[1, 2, 3]])).sum().backward(); optimizer.step()
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})
        self._scratch: dict[torch.Tensor, torch.Tensor] = {}

    def state_dict(self) -> dict:
        """The optimizer state with each table's moments kept for its used rows only.

        A row no batch has used has zero moments; a checkpoint need not store them
        (on real data that is often most of a hashed n-gram table).
        :meth:`load_state_dict` puts the zeros back.
        """
        saved = super().state_dict()  # its per-parameter dicts are the live ones: build new ones
        saved["state"] = {k: _used_rows_only(v) for k, v in saved["state"].items()}
        return saved

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = {**state_dict, "state": {k: _dense_moments(v) for k, v in state_dict["state"].items()}}
        super().load_state_dict(state_dict)

    @staticmethod
    def coalesced(grad: torch.Tensor) -> torch.Tensor:
        """``grad.coalesce()``, free when its rows already come sorted and unique.

        The bag model's closed-form backward (``textpipe.core.models.bag_mean_table_grad``)
        builds its gradient that way, but autograd's accumulation into ``.grad`` drops
        the tensor's coalesced flag; checking the order, O(rows), spares a sort.
        """
        if not grad.is_coalesced() and grad.sparse_dim() == 1:
            rows = grad._indices()[0]
            if bool((rows[1:] > rows[:-1]).all()):
                grad._coalesced_(True)
        return grad.coalesce()

    @torch.no_grad()
    def step(self, closure=None) -> None:
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                if not param.grad.is_sparse:
                    raise ValueError("RowAdam steps sparse gradients only (an nn.Embedding with sparse=True); use AdamW for the rest")
                self._step_rows(param, group)

    def _step_rows(self, param: torch.Tensor, group: dict) -> None:
        beta1, beta2 = group["betas"]
        grad = self.coalesced(param.grad)  # a row used twice in the batch becomes one row, its gradients summed
        rows, values = grad.indices()[0], grad.values()
        state = self.state[param]
        if not state:
            state["step"], state["exp_avg"], state["exp_avg_sq"] = 0, torch.zeros_like(param), torch.zeros_like(param)
        state["step"] += 1
        kernels, sqrt = row_kernels(), torch_sqrt()
        eps, floor = group["eps"], _sqrt_floor(group["eps"], param.dtype)
        step_size = group["lr"] * math.sqrt(1 - beta2 ** state["step"]) / (1 - beta1 ** state["step"])
        if kernels is not None and sqrt is not None and can_use(rows, values, param, state["exp_avg"], state["exp_avg_sq"]):
            # The same arithmetic as below in one pass over the used rows, with torch's own square root.
            scratch = param.new_empty(kernels.row_adam_scratch(param.shape[1]))  # a few kB, for one block of rows
            kernels.row_adam_step(param.data_ptr(), state["exp_avg"].data_ptr(), state["exp_avg_sq"].data_ptr(), rows.data_ptr(), values.data_ptr(),
                                  len(rows), param.shape[1], 1 - beta1, 1 - beta2, floor, eps, -step_size, sqrt, SQRT_MODE, scratch.data_ptr())
            return
        exp_avg, exp_avg_sq, d_avg, d_avg_sq = self._workspace(param, len(rows))
        # Each moment moves by a delta added back with index_add_, which on a CPU is faster
        # than index_copy_ of the new rows; so is an update scaled beforehand rather than
        # through index_add_'s alpha.
        torch.index_select(state["exp_avg"], 0, rows, out=exp_avg)
        torch.index_select(state["exp_avg_sq"], 0, rows, out=exp_avg_sq)
        torch.sub(values, exp_avg, out=d_avg).mul_(1 - beta1)
        torch.mul(values, values, out=d_avg_sq).sub_(exp_avg_sq).mul_(1 - beta2)
        state["exp_avg"].index_add_(0, rows, d_avg)
        state["exp_avg_sq"].index_add_(0, rows, d_avg_sq)
        exp_avg.add_(d_avg)
        exp_avg_sq.add_(d_avg_sq)
        denominator = exp_avg_sq.clamp_(min=floor).sqrt_().add_(eps)
        param.index_add_(0, rows, exp_avg.div_(denominator).mul_(-step_size))

    def _workspace(self, param: torch.Tensor, num_rows: int) -> tuple[torch.Tensor, ...]:
        # Four (rows, D) scratch tensors kept from step to step: fresh megabyte-sized tensors
        # each step cost the allocator page faults, more than the arithmetic done in them.
        # Not optimizer state: never saved.
        held = self._scratch.get(param)
        if held is None or held.shape[1] < num_rows:
            size = min(max(num_rows, 2 * (0 if held is None else held.shape[1])), param.shape[0])
            held = self._scratch[param] = param.new_empty((4, size, *param.shape[1:]))
        return tuple(held[:, :num_rows].unbind(0))


class DenseAdamW(NoDynamoImport, torch.optim.AdamW):
    """``torch.optim.AdamW``, its step one compiled loop per parameter on a CPU, the same weights bit for bit.

    torch's CPU step runs about ten tensor ops per parameter, and for the bag model's
    small head their fixed cost is most of the optimizer's time in a step. Where the
    kernels are there (:mod:`textpipe.core.kernels`: ``dense_adamw``, with torch's own square
    root) and the settings are the plain ones (no amsgrad, maximize, capturable,
    differentiable, foreach or fused), each parameter's step is one C call with torch's
    roundings; otherwise ``torch.optim.AdamW.step`` runs. The state is AdamW's, so
    checkpoints move freely between the two.

    Example:
        >>> optimizer = DenseAdamW(nn.Linear(64, 2).parameters(), lr=1e-3)
        >>> loss.backward(); optimizer.step()
    """

    @torch.no_grad()
    def step(self, closure=None):
        kernels, sqrt = row_kernels(), torch_sqrt()
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        if closure is not None or kernels is None or sqrt is None or not all(map(_plain, self.param_groups)) \
                or not all(_dense_float32_cpu(t) for p in params for t in (p, p.grad)):
            return super().step(closure)
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._step_param(param, group, kernels, sqrt)
        return None

    def _step_param(self, param: torch.Tensor, group: dict, kernels, sqrt: int) -> None:
        state = self.state[param]
        if not state:  # as AdamW starts one (a CPU float step count), so either step can continue the other
            state["step"] = torch.tensor(0.0, dtype=torch.get_default_dtype())
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["step"] += 1
        step, (beta1, beta2), lr = state["step"].item(), group["betas"], group["lr"]
        root = torch.empty_like(param)
        kernels.dense_adamw(param.data_ptr(), param.grad.data_ptr(), state["exp_avg"].data_ptr(), state["exp_avg_sq"].data_ptr(),
                            param.numel(), 1 - lr * group["weight_decay"], 1 - beta1, beta2, 1 - beta2,
                            math.sqrt(1 - beta2**step), group["eps"], -(lr / (1 - beta1**step)), sqrt, SQRT_MODE, root.data_ptr())


def _plain(group: dict) -> bool:
    return not any(group.get(k) for k in ("amsgrad", "maximize", "capturable", "differentiable", "foreach", "fused")) \
        and not isinstance(group["lr"], torch.Tensor)


def _dense_float32_cpu(t: torch.Tensor) -> bool:
    return t.layout == torch.strided and t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous()


def _sqrt_floor(eps: float, dtype: torch.dtype) -> float:
    """A floor for ``exp_avg_sq`` that leaves every ``sqrt(exp_avg_sq) + eps`` bit for bit as it was.

    ``torch.sqrt`` on a CPU (MKL's vsSqrt) is much slower on exact zeros than on other
    values, and many of a batch's moment entries are zeros (dimensions dropout
    zeroed in every step so far). The square root of anything up to ``(eps / 2**26)**2``
    is under half a float32 ulp of ``eps``, so adding ``eps`` rounds it away either way.
    """
    return (eps / 2**26) ** 2 if dtype == torch.float32 else 0.0


def _used_rows_only(state: dict) -> dict:
    """A RowAdam parameter state with the moments of the used rows only, and which rows those are.

    A row no step has used has both moments zero. So may a used row whose gradients were
    all zero; restoring zeros for it is exact either way. Found by scanning the moments
    here, at a checkpoint, rather than by marking rows in every step.
    """
    used = (state["exp_avg"].ne(0).any(1) | state["exp_avg_sq"].ne(0).any(1)).nonzero().squeeze(1)
    return {**state, "rows": used, "num_rows": state["exp_avg"].shape[0],
            "exp_avg": state["exp_avg"][used], "exp_avg_sq": state["exp_avg_sq"][used]}


def _dense_moments(state: dict) -> dict:
    """The inverse of :func:`_used_rows_only`: full-size moments."""
    state = dict(state)
    rows, num_rows = state.pop("rows"), state.pop("num_rows")
    for key in ("exp_avg", "exp_avg_sq"):
        full = state[key].new_zeros((num_rows, *state[key].shape[1:]))
        full[rows] = state[key]
        state[key] = full
    return state


def make_optimizers(model: nn.Module, config: TrainConfig) -> list[torch.optim.Optimizer]:
    """``AdamW`` for the dense parameters and :class:`RowAdam` for ``sparse=True`` embedding tables (each if any)."""
    sparse_ids = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse}
    sparse = [p for p in model.parameters() if id(p) in sparse_ids and p.requires_grad]
    dense = [p for p in model.parameters() if id(p) not in sparse_ids and p.requires_grad]
    optimizers: list[torch.optim.Optimizer] = []
    if dense:
        optimizers.append(DenseAdamW(dense, lr=config.lr, weight_decay=config.weight_decay))
    if sparse:
        optimizers.append(RowAdam(sparse, lr=config.lr))
    return optimizers


@torch.no_grad()
def clip_grad_norm(parameters: Iterable[nn.Parameter], max_norm: float) -> float:
    """Scale all gradients so that their total L2 norm is at most ``max_norm``; returns the norm before.

    ``torch.nn.utils.clip_grad_norm_`` rejects sparse gradients; here a sparse
    embedding gradient counts with the norm of its coalesced rows (a row a batch
    used twice is one row), which is what RowAdam then applies.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    norms = [(RowAdam.coalesced(g).values() if g.is_sparse else g).norm() for g in grads]
    total = torch.stack(norms).norm().item()
    if total > max_norm:
        scale = max_norm / (total + 1e-6)
        for p_grad in grads:
            if p_grad.is_sparse:
                p_grad.copy_(RowAdam.coalesced(p_grad) * scale)
            else:
                p_grad.mul_(scale)
    return total


def per_step_schedule(config: TrainConfig) -> bool:
    """True when the learning rate changes every optimizer step (warmup, "linear_steps"), not every epoch."""
    return config.warmup > 0 or config.schedule == "linear_steps"


def lr_factor(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The multiplier of the base lr as a function of the scheduler's count.

    Without warmup and for "linear" / "constant" the count is epochs (the scheduler
    steps once per epoch; "linear" decays from lr to lr / epochs, large steps early
    and fine ones late); with ``warmup > 0`` or "linear_steps" it is optimizer
    steps: a linear rise over the first ``warmup`` fraction of all steps, then
    "linear" / "linear_steps" fall linearly to 0 at the last step.
    """
    if not per_step_schedule(config):
        return (lambda e: 1 - e / config.epochs) if config.schedule == "linear" else (lambda e: 1.0)
    total = config.epochs * steps_per_epoch
    warm = int(config.warmup * total)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        if config.schedule == "constant":
            return 1.0
        return max(0.0, (total - step) / max(1, total - warm))

    return factor


def make_schedulers(optimizers: list[torch.optim.Optimizer], config: TrainConfig, steps_per_epoch: int) -> list[torch.optim.lr_scheduler.LambdaLR]:
    """One ``LambdaLR`` per optimizer following :func:`lr_factor` (``steps_per_epoch`` matters for per-step schedules only)."""
    factor = lr_factor(config, steps_per_epoch)
    return [torch.optim.lr_scheduler.LambdaLR(opt, factor) for opt in optimizers]


SMALL_FILE_ROWS = 2048  # the bag's lr is set for files of this many rows and more; a smaller file takes proportionally fewer steps an epoch


def lr_for_rows(lr: float, rows: int, model: str) -> float:
    """The bag's learning rate for a training file of ``rows`` rows: ``lr`` x ``SMALL_FILE_ROWS / rows``, at most 10 x
    (a run applies it to the default lr only: an lr set to another value is used as given).

    Early stopping counts epochs; a file of 240 rows is 7 steps an epoch, and at 1e-3 the
    bag was still at chance when its patience ran out. Scaling the lr so a small file's
    epoch moves the weights as far as a 2,048-row one took it past chance in 2 epochs
    (dev accuracy 0.96 on the 240-row case of tests/test_calibration.py). Other models,
    and files of 2,048 rows or more, train at ``lr`` itself.

    Example:
        >>> lr_for_rows(1e-3, 240, "bag"), lr_for_rows(1e-3, 9000, "bag")
        (0.008533333333333334, 0.001)
    """
    if model != "bag" or rows >= SMALL_FILE_ROWS:
        return lr
    return lr * min(10.0, SMALL_FILE_ROWS / max(rows, 1))
