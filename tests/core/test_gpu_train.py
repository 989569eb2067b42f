"""bench/gpu_train.py trains from a tensor file written from the cache, importing no torchtext or spaCy."""

import json
import subprocess
import sys
from pathlib import Path

from conftest import make_rows, write_csv
from textpipe.text.dataset import TextClassificationDataset
from textpipe.text.tokenizer import Tokenizer
from textpipe.text.vocab import build_vocab

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_train.py"


def test_gpu_train_runs_without_text_stages(tmp_path):
    rows = make_rows(600, seed=8)
    path = write_csv(tmp_path / "train.csv", rows)
    tok = Tokenizer("whitespace")
    vocab = build_vocab(tok(t) for _, t in rows)
    cache = TextClassificationDataset(path, tok, vocab, ["neg", "pos"], cache_dir=tmp_path / "c").cache
    tensors = tmp_path / "toy.pt"
    subprocess.run([sys.executable, str(SCRIPT), "--write", str(tensors), str(cache.folder)], check=True)
    out = tmp_path / "gpu.json"
    check = (
        "import runpy, sys, json\n"
        f"sys.argv = ['gpu_train.py', {str(tensors)!r}, '--device', 'cpu', '--models', 'bag', '--batch-sizes', '16', '--epochs', '4', "
        f"'--repeat', '2', '--out', {str(out)!r}]\n"
        f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('torchtext', 'spacy', 'torchdata'))\n"
        "print(json.dumps(loaded))\n"
    )
    printed = subprocess.run([sys.executable, "-c", check], check=True, capture_output=True, text=True, env={"OMP_NUM_THREADS": "1", "PATH": ""}).stdout
    assert json.loads(printed.strip().splitlines()[-1]) == []
    result = json.loads(out.read_text())
    assert result["rows"] == 1200  # --repeat 2
    pipeline, prebuilt = result["runs"]
    assert (pipeline["data_path"], prebuilt["data_path"]) == ("pipeline", "prebuilt")
    assert pipeline["rows_per_s"] > 0 and prebuilt["rows_per_s"] > 0
    assert pipeline["epochs"][-1]["train_accuracy"] > 0.7  # separable toy data: it learns
    # Building the batches ahead changes when they are made, not what is trained.
    assert [e["train_accuracy"] for e in pipeline["epochs"]] == [e["train_accuracy"] for e in prebuilt["epochs"]]
