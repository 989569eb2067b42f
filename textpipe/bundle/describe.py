"""What ``textpipe info`` shows about a bundle, and the side files it reads with their types checked.

:func:`bundle_info` loads a bundle's parts with every check :func:`~textpipe.bundle.store.load_bundle`
makes and describes them; :func:`verify_bundle` returns the one digest to pin; :func:`side_file`
and :func:`saved_config` read ``run.json``, ``metrics.json`` and ``config.json`` (size-, type- and
depth-checked; a refusal is a :class:`~textpipe.bundle.store.BundleError`).

Example:
    >>> bundle_info("runs/mine")["labels"]
    ['neg', 'pos']
"""

from __future__ import annotations

from pathlib import Path

from .store import META, WEIGHTS, BundleError, check_encoder_record, load_bundle, read_bundle_json, read_meta, read_parts
from ..core.files import CONFIG, METRICS, RUN, file_sha256

# The fields of run.json and metrics.json that info shows, and the JSON type each must have (or null).
RUN_FIELDS, METRICS_FIELDS = {"created": str, "versions": dict, "data": dict}, {"test": dict, "dev": dict, "best_epoch": int, "per_class": dict}


def saved_config(path: str | Path) -> dict:
    """The training config a bundle folder carries (``config.json``, as plain data); ``{}`` without one.
    Its ``data`` and ``data.source`` are objects (checked, as commands read them)."""
    file = Path(path) / CONFIG
    config = read_bundle_json(file, "config file") if file.exists() else {}
    data = config.get("data", {}) if isinstance(config, dict) else None
    source = data.get("source", {}) if isinstance(data, dict) else None
    for field, value in (("the file", config), ("field data", data), ("field data.source", source)):
        if not isinstance(value, dict):
            raise BundleError(f"{file}: {field} must be a JSON object")
    return config


def bundle_info(path: str | Path) -> dict:
    """Everything ``textpipe info`` shows about a bundle, read once its files match the manifest and its
    tensors fit its model (the weights are loaded as tensors only).

    Example:
        >>> bundle_info("runs/mine")["weights_sha256"]
    """
    path = Path(path)
    meta = read_meta(path)
    model_config, vocab, _, state = read_parts(path, meta)  # the parameters of the model, not of its compact storage
    if model_config.encoder:
        check_encoder_record(path, meta, model_config)  # its precision too: info shows what predict would load
    run, metrics = side_file(path / RUN, RUN_FIELDS), side_file(path / METRICS, METRICS_FIELDS)
    return {
        "path": str(path),
        "format_version": meta["format_version"],
        "model": meta["model"],
        "tokenizer": meta["tokenizer"],
        "labels": meta["labels"],
        "vocab_size": len(vocab),
        "parameters": sum(t.numel() for t in state.values()),
        "train": meta.get("train", {}),
        "config": saved_config(path) or None,
        "metrics": {k: metrics[k] for k in METRICS_FIELDS if k in metrics} or None,  # the summary, not the history
        "created": run.get("created"),
        "versions": run.get("versions"),
        "data": run.get("data"),
        "weights_sha256": meta["files"][WEIGHTS]["sha256"],
        "weights_bytes": meta["files"][WEIGHTS]["bytes"],
        "bundle_sha256": file_sha256(path / META),
        "quantized": meta.get("quantized"),
        **({"multi_label": meta["multi_label"]} if "multi_label" in meta else {}),  # label_sep and each label's threshold
        **({"encoder": {"precision": "float32", **meta["encoder"]}} if model_config.encoder else {}),
    }


def side_file(file: Path, types: dict[str, type]) -> dict:
    """A JSON object beside the bundle (``{}`` without the file), its fields in ``types`` of their type or null."""
    value = read_bundle_json(file, "bundle file") if file.exists() else {}
    test = value.get("test") if isinstance(value, dict) else None
    for field, kind in {"": dict, **types, **({"test.accuracy": float, "test.macro_f1": float, "test.n": int} if test else {})}.items():
        found = value if not field else test.get(field[5:]) if field.startswith("test.") else value.get(field)
        if (found is not None or not field) and (not isinstance(found, (int, float) if kind is float else kind) or isinstance(found, bool)):
            raise BundleError(f"{file}: {'field ' + field if field else 'the file'} must be a JSON {kind.__name__.replace('dict', 'object')}")
    return value


def verify_bundle(path: str | Path) -> str:
    """Load the bundle with every check :func:`load_bundle` makes; return the sha256 of its ``bundle.json``,
    the one digest to pin (``textpipe info --verify``): that file holds the size and sha256 of the others."""
    load_bundle(path)
    return file_sha256(Path(path) / META)
