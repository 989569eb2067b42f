"""Property tests (hypothesis): generated garbage fed to every reader of a file or flag a user hands textpipe.

Each reader must either give a clean result (exit 0) or refuse with exit 2 and a short message
(no traceback, no other exit status): bundle.json, vocab.json, config.json, run.json and
metrics.json of any shape or type; a bundle.json whose prediction fields were rewritten and
re-hashed (what someone who can edit the manifest does); forged quantized parts; a
``quantized`` field of garbage; JSONL rows with arbitrary labels; text arguments of any
characters (lone surrogates included); any ``--port``. The CLI runs in this process
(``cli_here``), so the whole file takes seconds. More examples: HYPOTHESIS_EXAMPLES=500.
"""

import json
import os
import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from conftest import cli_here, make_rows
from textpipe.bundle.store import Bundle, fields_digest, file_digest, load_weights, save_bundle
from textpipe.core.models import ModelConfig, build_model
from textpipe.bundle.quantize import QuantizeConfig, quantize_bundle
from textpipe.text.tokenizer import Tokenizer
from textpipe.text.vocab import build_vocab

SETTINGS = settings(max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", 10)), deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=16)
deep = st.integers(30, 200_000).map(lambda n: "[" * n + "]" * n)
huge_int = st.integers(4_000, 6_000).map(lambda n: "9" * n)
raw_files = st.one_of(json_values.map(json.dumps), deep, huge_int, st.binary(max_size=200).map(lambda b: b.decode("latin-1")))


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """A small bundle with its side files, and a quantized copy of it."""
    folder = tmp_path_factory.mktemp("garbage")
    tok = Tokenizer("whitespace")
    vocab = build_vocab(tok(text) for _, text in make_rows(40))
    config = ModelConfig(vocab_size=len(vocab), num_classes=2, embed_dim=8, ngram_buckets=32)
    torch.manual_seed(0)
    plain = save_bundle(folder / "plain", Bundle(build_model(config), vocab, tok, ["neg", "pos"], config, {"seed": 0}))
    (plain / "config.json").write_text(json.dumps({"data": {"source": {"header": True}}}))
    (plain / "run.json").write_text(json.dumps({"created": "2026-01-01", "versions": {"torch": "2.3.1"}, "data": {"test": "t.csv"}}))
    (plain / "metrics.json").write_text(json.dumps({"test": {"accuracy": 0.5, "macro_f1": 0.5, "n": 4}, "best_epoch": 1}))
    quantize_bundle(plain, folder / "quantized", QuantizeConfig(cutoff=None))
    return folder


@pytest.fixture
def scratch(bundles, tmp_path):
    """A fresh copy of a bundle for each example (hypothesis reuses the test's tmp_path)."""
    copies = []

    def copy(name: str):
        target = tmp_path / f"copy-{len(copies)}"
        shutil.copytree(bundles / name, target)
        copies.append(target)
        return target

    yield copy
    for target in copies:
        shutil.rmtree(target, ignore_errors=True)


def rehash(path) -> None:
    """Make bundle.json's manifest match the files again (the forger's last step)."""
    meta = json.loads((path / "bundle.json").read_text())
    meta["files"] = {name: file_digest(path / name) for name in ("weights.safetensors", "vocab.json")}
    meta["files"]["bundle.json"] = {"fields": ["model", "tokenizer", "labels"], "sha256": fields_digest(meta)}
    (path / "bundle.json").write_text(json.dumps(meta))


def clean_or_exit_2(*args) -> None:
    result = cli_here(*args)
    assert result.returncode in (0, 2), (result.returncode, result.stderr[-2000:])
    if result.returncode == 2:
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) <= 2, result.stderr


def commands(path):
    return [["info", path], ["predict", "--model", path, "a good film"]]  # what info reads, and a full load


@SETTINGS
@given(name=st.sampled_from(["bundle.json", "vocab.json", "config.json", "run.json", "metrics.json"]), content=raw_files, forge=st.booleans())
def test_any_side_file_gives_a_result_or_exit_2(scratch, name, content, forge):
    path = scratch("plain")
    (path / name).write_bytes(content.encode("utf-8", "surrogatepass"))
    if forge and name == "vocab.json":
        meta = json.loads((path / "bundle.json").read_text())
        meta["files"]["vocab.json"] = file_digest(path / "vocab.json")
        (path / "bundle.json").write_text(json.dumps(meta))
    for command in commands(path):
        clean_or_exit_2(*command)


FIELDS = [("labels",), ("tokenizer",), ("tokenizer", "name"), ("tokenizer", "lower"), ("model",), ("model", "name"), ("model", "embed_dim"),
          ("model", "vocab_size"), ("model", "kernel_sizes"), ("model", "dropout"), ("files",), ("files", "vocab.json"),
          ("files", "vocab.json", "bytes"), ("train",), ("train", "seed"), ("quantized",), ("quantized", "rows"), ("quantized", "method"),
          ("format_version",)]


@SETTINGS
@given(field=st.sampled_from(FIELDS), value=json_values, quantized=st.booleans())
def test_bundle_json_fields_rewritten_and_rehashed_give_a_result_or_exit_2(scratch, field, value, quantized):
    path = scratch("quantized" if quantized else "plain")
    meta = json.loads((path / "bundle.json").read_text())
    *parents, last = field
    target = meta
    for key in parents:
        target = target.setdefault(key, {})
    target[last] = value
    if isinstance(meta["files"], dict) and isinstance(meta["files"].get("bundle.json"), dict):
        meta["files"]["bundle.json"]["sha256"] = fields_digest(meta)  # the forger re-hashes the fields
    (path / "bundle.json").write_text(json.dumps(meta))
    for command in commands(path) + [["quantize", "--model", path, "--out", path.parent / f"{path.name}-q"]]:
        clean_or_exit_2(*command)
    shutil.rmtree(path.parent / f"{path.name}-q", ignore_errors=True)


parts = st.sampled_from(["q_values", "q_scale", "q_kept", "q_shape"])
dtypes = st.sampled_from([torch.uint8, torch.int8, torch.int32, torch.int64, torch.float16, torch.float32])


@SETTINGS
@given(part=parts, dtype=dtypes, values=st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=6), reshape=st.booleans())
def test_forged_quantized_parts_give_a_result_or_exit_2(scratch, part, dtype, values, reshape):
    path = scratch("quantized")
    state = load_weights(path)
    name = f"embedding.weight.{part}"
    if reshape:  # another shape, values of the generator's choosing
        state[name] = torch.tensor(values, dtype=torch.int64).clamp(0, 255 if dtype == torch.uint8 else 2**31 - 1).to(dtype)
    else:  # the same shape, another dtype, some entries overwritten
        forged = state[name].to(dtype).flatten().clone()
        for i, v in enumerate(values[: len(forged)]):
            forged[i] = max(min(v, 255), 0) if dtype in (torch.uint8,) else max(min(v, 127), -128) if dtype == torch.int8 else v % 1000
        state[name] = forged.view(state[name].shape)
    save_file(state, path / "weights.safetensors")
    rehash(path)
    for command in commands(path):
        clean_or_exit_2(*command)


@SETTINGS
@given(label=json_values, raw=st.one_of(st.none(), huge_int, deep),
       skip=st.booleans())
def test_jsonl_rows_with_any_label_give_a_result_or_exit_2(bundles, tmp_path, label, raw, skip):
    path = tmp_path / "rows.jsonl"
    bad = '{"text": "a film", "label": %s}' % (raw if raw is not None else json.dumps(label))
    path.write_text('{"text": "a good film", "label": "pos"}\n' + bad + '\n{"text": "a dull film", "label": "neg"}\n', encoding="utf-8")
    args = ["--on-bad-row", "skip"] if skip else []
    clean_or_exit_2("predict", "--model", bundles / "plain", "--input", path, *args)
    clean_or_exit_2("vocab", "build", path, "--out", tmp_path / "vocab.json", "--tokenizer", "whitespace", *args)


@SETTINGS
@given(texts=st.lists(st.text(st.characters(blacklist_categories=()), max_size=20), min_size=1, max_size=3))
def test_any_text_argument_gives_a_result_or_exit_2(bundles, texts):
    if texts != ["-"]:  # a lone "-" reads stdin
        clean_or_exit_2("predict", "--model", bundles / "plain", "--", *texts)


@SETTINGS
@given(port=st.integers(max_value=-1) | st.integers(min_value=65536))
def test_a_port_out_of_range_is_exit_2(bundles, port):
    result = cli_here("serve", "--model", bundles / "plain", "--port", port)
    assert result.returncode == 2 and "--port" in result.stderr
