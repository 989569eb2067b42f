"""bench/gpu_train.py trains from a tensor file written from the cache, importing no torchtext or spaCy."""

import json
import subprocess
import sys
from pathlib import Path

from conftest import make_rows, write_csv
from textpipe.dataset import TextClassificationDataset
from textpipe.tokenizer import Tokenizer
from textpipe.vocab import build_vocab

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_train.py"


def test_gpu_train_runs_without_text_stages(tmp_path):
    rows = make_rows(600, seed=8)
    path = write_csv(tmp_path / "train.csv", rows)
    tok = Tokenizer("whitespace")
    vocab = build_vocab(tok(t) for _, t in rows)
    cache = TextClassificationDataset(path, tok, vocab, ["neg", "pos"], cache_dir=tmp_path / "c").cache
    tensors = tmp_path / "toy.pt"
    subprocess.run([sys.executable, str(SCRIPT), "--write", str(tensors), str(cache.folder)], check=True)
    check = (
        "import runpy, sys, json\n"
        f"sys.argv = ['gpu_train.py', {str(tensors)!r}, '--device', 'cpu', '--epochs', '4', '--batch-size', '16']\n"
        f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('torchtext', 'spacy', 'torchdata'))\n"
        "print(json.dumps(loaded))\n"
    )
    out = subprocess.run([sys.executable, "-c", check], check=True, capture_output=True, text=True, env={"OMP_NUM_THREADS": "1", "PATH": ""}).stdout
    result, loaded = (json.loads(line) for line in out.strip().splitlines()[-2:])
    assert loaded == []
    assert result["rows"] == 600 and result["rows_per_s_after_first"] > 0
    assert result["epochs"][-1]["train_accuracy"] > 0.7  # separable toy data: it learns
