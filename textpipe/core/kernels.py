"""Compiled C loops over the rows a batch used: RowAdam's row updates and the bag's table gradient.

A sparse training step on a CPU is bound by memory traffic, and torch ops make one
pass over every used row per op. RowAdam's step takes two gathers, three scatters
and a dozen elementwise ops in torch; ``row_adam_step`` does the same float32
arithmetic in the same order in one pass, a block of rows at a time, taking each
block's square roots with the very function torch's ``sqrt`` calls on this CPU
(:func:`torch_sqrt`: MKL's, which is not the correctly rounded ``sqrtf``);
``dense_adamw`` is ``torch.optim.AdamW``'s step for one dense parameter, in one
call where torch makes about ten.
:func:`bag_mean_table_grad`, the bag model's closed-form table gradient, sorts
every id in torch; ``bag_rows`` finds the used rows, in order, through a bitmap,
and ``bag_rows_sum`` adds their shares in the order torch does. So the weights come
out the same bit for bit either way (tests check it). ``kernels.c`` is compiled once
with the system C compiler (``$CC``, else ``cc``) into ``kernels/`` of the cache
folder and called through ctypes: no torch headers, no build step at install.
Without a compiler :func:`row_kernels` is None and the torch ops run.

Part of the tensor core: the standard library and torch only.

Example:
    >>> kernels = row_kernels()
    >>> kernels is None or callable(kernels.row_adam_step)
    True
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import subprocess
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import torch

from .files import cache_home, temp_file_beside

SOURCE = Path(__file__).with_name("kernels.c")
# -ffp-contract=off: no fused multiply-add, which would round differently from the torch ops.
FLAGS = ["-O3", "-ffp-contract=off", "-shared", "-fPIC"]
# This CPU's vector instructions (what they gain: docs/benchmarks.md). Each float op
# is still one IEEE-rounded op per element, so the results are the same bit for bit; tried
# first, dropped where the compiler refuses it. The library's key names the CPU (_cpu()).
NATIVE = ["-march=native"]
LIBS = ["-lm"]  # fmaf; after the source, where the linker looks for what it needs

log = logging.getLogger(__name__)


_torch_ops_only = False


@contextmanager
def torch_ops_only() -> Iterator[None]:
    """Within the block, :func:`row_kernels` is None: the torch ops run (the reference the kernels are tested against)."""
    global _torch_ops_only
    before, _torch_ops_only = _torch_ops_only, True
    try:
        yield
    finally:
        _torch_ops_only = before


def row_kernels() -> ctypes.CDLL | None:
    """The compiled ``row_adam_step``, ``dense_adamw``, ``bag_rows``, ``bag_rows_sum``, ``bag_ngram_ids`` and ``present_ids`` (built on first use, then cached), or None."""
    return None if _torch_ops_only else _load_kernels()


@functools.cache
def _load_kernels() -> ctypes.CDLL | None:
    compiler = os.environ.get("CC", "cc")
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join([compiler, *FLAGS, *NATIVE, *LIBS, platform.machine(), _cpu()]).encode()).hexdigest()[:16]
    library = cache_home() / "kernels" / f"kernels-{key}.so"
    try:
        if not library.is_file():
            _compile(compiler, library)
        return _declared(ctypes.CDLL(str(library)))
    except (OSError, AttributeError, subprocess.SubprocessError) as e:  # no compiler, or a library without our symbols
        log.info("no compiled row kernels, torch ops instead (%s)", e)
        return None


def _declared(kernels: ctypes.CDLL) -> ctypes.CDLL:
    """The library with each function's argument and result types (ctypes checks and converts calls by them)."""
    pointer, size, number = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
    kernels.row_adam_step.argtypes = (pointer,) * 5 + (size,) * 2 + (number,) * 5 + (pointer, ctypes.c_longlong, pointer)
    kernels.row_adam_scratch.argtypes = (size,)
    kernels.dense_adamw.argtypes = (pointer,) * 4 + (size,) + (number,) * 7 + (pointer, ctypes.c_longlong, pointer)
    kernels.dense_adamw.restype = None
    kernels.bag_rows.argtypes = (pointer, size, size, pointer, pointer, pointer)
    kernels.bag_rows_sum.argtypes = (pointer, pointer, size, pointer, size, pointer, pointer)
    kernels.row_adam_step.restype = kernels.bag_rows_sum.restype = None
    kernels.row_adam_scratch.restype = size
    kernels.bag_rows.restype = size
    kernels.bag_ngram_ids.argtypes = (pointer, pointer, size, size, pointer) + (size,) * 4 + (pointer, pointer)
    kernels.bag_ngram_ids.restype = size
    kernels.present_ids.argtypes = (pointer, pointer, size, pointer, pointer, pointer)
    kernels.present_ids.restype = size
    kernels.chunk_table_new.restype = pointer
    kernels.chunk_table_free.argtypes = (pointer,)
    kernels.chunk_table_add.argtypes = (pointer,) * 4 + (size,)
    kernels.chunk_table_add.restype = size
    kernels.chunk_codes.argtypes = (pointer, pointer, pointer, size) + (pointer,) * 4
    kernels.chunk_codes.restype = size
    kernels.char_to_byte_ends.argtypes = (pointer, pointer, size)
    kernels.char_to_byte_ends.restype = None
    return kernels


def _cpu() -> str:
    """This CPU's model and instruction sets (Linux), so a cache folder shared by machines never hands
    one a library built for another's -march=native."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return " ".join(dict.fromkeys(line for line in lines if line.startswith(("model name", "flags"))))


def _compile(compiler: str, library: Path) -> None:
    library.parent.mkdir(parents=True, exist_ok=True)
    # Built beside its final name and renamed into place: two processes compiling at once
    # each install a whole library, never half of one.
    fd, tmp = temp_file_beside(library)
    os.close(fd)
    try:
        try:
            subprocess.run([compiler, *FLAGS, *NATIVE, "-o", str(tmp), str(SOURCE), *LIBS], check=True, capture_output=True, timeout=120)
        except subprocess.CalledProcessError:  # a compiler without -march=native
            subprocess.run([compiler, *FLAGS, "-o", str(tmp), str(SOURCE), *LIBS], check=True, capture_output=True, timeout=120)
        os.replace(tmp, library)
        for old in library.parent.glob("kernels-*.so"):  # built from an earlier kernels.c
            if old != library:
                old.unlink(missing_ok=True)
    finally:
        tmp.unlink(missing_ok=True)


# The mode torch passes to MKL's vmsSqrt (ATen's vml.h): VML_HA | VML_ERRMODE_IGNORE | VML_FTZDAZ_OFF.
SQRT_MODE = 0x2 | 0x100 | 0x140000


@functools.cache
def torch_sqrt() -> int | None:
    """The address of the function torch's float32 ``sqrt`` runs on this CPU (MKL's ``vmsSqrt``), or None.

    Looked up in torch's own library, and used only if it gives ``torch.sqrt``'s roots
    bit for bit on a probe of values from 1e-40 to 1e30, zeros, infinity and NaN (a
    torch built without MKL takes its roots elsewhere: then None, and RowAdam's torch ops run).
    """
    try:
        library = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
        address = ctypes.cast(library.vmsSqrt, ctypes.c_void_p).value
    except (OSError, AttributeError):
        return None
    generator = torch.Generator().manual_seed(0)  # not the global generator: a run's random stream stays as it was
    scales = torch.logspace(-40, 30, 71).repeat_interleave(97)
    probe = torch.cat([torch.rand(len(scales), generator=generator) * scales, torch.tensor([0.0, 1e-45, float("inf"), float("nan")])])
    roots = torch.empty_like(probe)
    ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_longlong)(address)(
        len(probe), probe.data_ptr(), roots.data_ptr(), SQRT_MODE)
    return address if torch.equal(roots.view(torch.int32), probe.sqrt().view(torch.int32)) else None


def can_use(rows: torch.Tensor, values: torch.Tensor, *tables: torch.Tensor) -> bool:
    """Whether the kernel's layout holds: contiguous CPU tensors, int64 rows, float32 (num_rows, D) tables and values."""
    return (rows.dtype == torch.int64 and rows.device.type == "cpu" and rows.is_contiguous()
            and all(t.dtype == torch.float32 and t.device.type == "cpu" and t.dim() == 2 and t.shape[1] == values.shape[1]
                    and t.is_contiguous() for t in (values, *tables)))


def bag_mean_table_grad(flat_ids: torch.Tensor, lengths: torch.Tensor, grad_pooled: torch.Tensor, num_rows: int) -> torch.Tensor:
    """The gradient of mean-pooled bags w.r.t. their table: a coalesced sparse ``(num_rows, D)`` tensor.

    Bag ``i`` holds ``lengths[i]`` consecutive ids of ``flat_ids``; each of them receives
    ``grad_pooled[i] / lengths[i]``, and a row used several times the sum of its shares,
    added in the order the ids come (the same sums every run). Never builds autograd's
    ``(N, D)`` tensor of per-id gradients.

    Example:
        >>> g = bag_mean_table_grad(torch.tensor([3, 5, 3]), torch.tensor([2, 1]), torch.ones(2, 1), 8)
        >>> g._indices(), g._values().squeeze(1)  # row 3: 1/2 from bag 0 + 1/1 from bag 1; row 5: 1/2
        (tensor([[3, 5]]), tensor([1.5000, 0.5000]))
    """
    share = grad_pooled / lengths.clamp(min=1).unsqueeze(1).to(grad_pooled.dtype)  # (B, D)
    kernels = row_kernels()
    if kernels is not None and can_use(flat_ids, share) and lengths.dtype == torch.int64 and lengths.is_contiguous():
        rows, values = _summed_rows(kernels, flat_ids, lengths, share, num_rows)
    else:  # the ids sorted (stably); each used row's sum is one bag of an embedding_bag(mode="sum") over the shares
        bag_of_id = torch.arange(len(lengths), device=flat_ids.device).repeat_interleave(lengths, output_size=flat_ids.numel())  # (N,)
        sorted_ids, order = flat_ids.sort(stable=True)
        rows, uses = torch.unique_consecutive(sorted_ids, return_counts=True)  # (U,)
        values = torch.nn.functional.embedding_bag(bag_of_id[order], share, uses.cumsum(0) - uses, mode="sum")  # (U, D)
    # Sorted, unique rows by construction, so no invariant check (said explicitly: newer torch warns otherwise).
    return torch.sparse_coo_tensor(rows.unsqueeze(0), values, (num_rows, share.shape[1]), is_coalesced=True, check_invariants=False)


# bag_rows' bitmap (all zeros between calls) and slots, per thread and table size: two threads
# running backward at once must not share them.
_scratch: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}


def _summed_rows(kernels: ctypes.CDLL, flat_ids: torch.Tensor, lengths: torch.Tensor, share: torch.Tensor, num_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The used rows, sorted, and the sum of each one's shares: ``bag_rows`` then ``bag_rows_sum``."""
    # C reads and writes where the ids and lengths point: check them first, as torch's ops would.
    if int(lengths.sum()) != len(flat_ids) or (len(flat_ids) and not 0 <= int(flat_ids.min()) <= int(flat_ids.max()) < num_rows):
        raise IndexError(f"bag ids must lie in [0, {num_rows}) and the bag lengths add up to their number ({len(flat_ids)})")
    key = (threading.get_ident(), num_rows)
    if key not in _scratch:
        _scratch[key] = torch.zeros((num_rows + 63) // 64, dtype=torch.int64), torch.empty(num_rows, dtype=torch.int32)
    seen, slot = _scratch[key]
    rows = flat_ids.new_empty(len(flat_ids))
    used = kernels.bag_rows(flat_ids.data_ptr(), len(flat_ids), num_rows, seen.data_ptr(), slot.data_ptr(), rows.data_ptr())
    values = share.new_zeros((used, share.shape[1]))
    kernels.bag_rows_sum(flat_ids.data_ptr(), lengths.data_ptr(), len(lengths), share.data_ptr(), share.shape[1], slot.data_ptr(), values.data_ptr())
    return rows[:used], values


def bag_ngram_ids(ids: torch.Tensor, mask: torch.Tensor, keep: torch.Tensor | None,
                  table: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``bag_ngram_ids``: the bag model's flat word and n-gram ids and each text's count, or None without the kernels.
    ``table``: (vocab_size, n-gram buckets, max_ngram), the bag's table.

    What ``BagOfNgrams.add_ngrams`` then ``ids[mask & keep]`` give, in one pass with no
    ``(B, T')`` tensors in between.
    """
    kernels, (vocab_size, buckets, max_ngram) = row_kernels(), table
    tensors = (ids, mask) if keep is None else (ids, mask, keep)
    if kernels is None or ids.dtype != torch.int64 or any(t.device.type != "cpu" or not t.is_contiguous() for t in tensors):
        return None
    flat, lengths = ids.new_empty(ids.numel() * (max_ngram if buckets else 1)), ids.new_empty(ids.shape[0])
    total = kernels.bag_ngram_ids(ids.data_ptr(), mask.data_ptr(), ids.shape[0], ids.shape[1], 0 if keep is None else keep.data_ptr(),
                                  0 if keep is None else keep.shape[1], vocab_size, buckets, max_ngram, flat.data_ptr(), lengths.data_ptr())
    return flat[:total], lengths


def present_ids(flat_ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``present_ids``: each text's distinct ids (ascending) end to end and their count, or None without the kernels.

    What ``NBLinear.present`` computes with ``torch.unique`` (a sort of every key of the
    batch), in one pass with a bitmap and a sort per text.

    Example:
        >>> present_ids(torch.tensor([7, 3, 7, 5]), torch.tensor([3, 1]))  # with the kernels
        (tensor([3, 7, 5]), tensor([2, 1]))
    """
    kernels = row_kernels()
    if kernels is None or any(t.dtype != torch.int64 or t.device.type != "cpu" or not t.is_contiguous() for t in (flat_ids, lengths)):
        return None
    # C reads and writes where the ids and lengths point: check them first, as torch's ops would.
    if int(lengths.sum()) != len(flat_ids) or bool((lengths < 0).any()) or (len(flat_ids) and int(flat_ids.min()) < 0):
        raise IndexError(f"ids must be >= 0 and the lengths non-negative, adding up to their number ({len(flat_ids)})")
    width = int(flat_ids.max()) + 1 if len(flat_ids) else 1
    out, counts = flat_ids.new_empty(len(flat_ids)), lengths.new_empty(len(lengths))
    seen = torch.zeros((width + 63) // 64, dtype=torch.int64)
    total = kernels.present_ids(flat_ids.data_ptr(), lengths.data_ptr(), len(lengths), seen.data_ptr(), out.data_ptr(), counts.data_ptr())
    return out[:total], counts


class ChunkTable:
    """Whitespace chunks -> numbers, in C: ``chunk_codes`` splits texts as ``str.split()`` does
    and looks each chunk up, in one pass over their UTF-8 bytes (for :class:`~textpipe.text.encoder.TextEncoder`).

    Example:
        >>> table = ChunkTable.create()  # None without the kernels
        >>> table.add(["great"], [0]); table.codes(["a great film"])[0]
        tensor([-1,  0, -1])
    """

    def __init__(self, kernels: ctypes.CDLL):
        self._kernels, self._table = kernels, kernels.chunk_table_new()
        if not self._table:
            raise MemoryError("chunk table")

    @classmethod
    def create(cls) -> "ChunkTable | None":
        kernels = row_kernels()
        return None if kernels is None else cls(kernels)

    def fresh(self) -> "ChunkTable":
        """An empty table (the encoder's memo started over)."""
        return ChunkTable(self._kernels)

    def __del__(self) -> None:
        if getattr(self, "_table", None):
            self._kernels.chunk_table_free(self._table)
            self._table = None

    def add(self, chunks: list[str], codes: list[int]) -> None:
        """Remember chunk ``chunks[i]`` as number ``codes[i]``."""
        encoded = [chunk.encode("utf-8", "surrogatepass") for chunk in chunks]
        ends = torch.tensor(list(map(len, encoded)), dtype=torch.int64).cumsum(0)
        numbers = torch.tensor(codes, dtype=torch.int64)
        if self._kernels.chunk_table_add(self._table, b"".join(encoded), ends.data_ptr(), numbers.data_ptr(), len(chunks)):
            raise MemoryError("chunk table")

    def codes(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, list[int], list[str]]:
        """Each chunk's number (-1: unknown), each text's chunk count, and where the unknown chunks are and what they say."""
        joined = "\n".join(texts)  # a newline is whitespace: no chunk spans two texts
        data = joined.encode("utf-8", "surrogatepass")
        ends = torch.tensor(list(map(len, texts)), dtype=torch.int64).add_(1).cumsum(0).sub_(1)  # in characters
        if len(data) != len(joined):  # not all ASCII: in bytes
            self._kernels.char_to_byte_ends(data, ends.data_ptr(), len(texts))
        most = len(data) // 2 + len(texts) + 1  # a chunk is a byte at least, and two in a text have a space between
        codes, starts, lens = (torch.empty(most, dtype=torch.int64) for _ in range(3))
        per_text = torch.empty(len(texts), dtype=torch.int64)
        n = self._kernels.chunk_codes(self._table, data, ends.data_ptr(), len(texts), codes.data_ptr(), starts.data_ptr(), lens.data_ptr(), per_text.data_ptr())
        codes = codes[:n]
        missing = torch.nonzero(codes < 0).squeeze(1).tolist()
        begin, size = starts[missing].tolist(), lens[missing].tolist()
        return codes, per_text, missing, [data[b : b + z].decode("utf-8", "surrogatepass") for b, z in zip(begin, size)]
