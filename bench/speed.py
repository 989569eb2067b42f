"""Speed of every stage, with fastText and TF-IDF + logistic regression timed in the same run.

    make bench                         # or: .venv/bin/python bench/speed.py  (about 5-8 minutes on 2 cores)

Writes ``bench/results/speed.json`` and ``bench/results/speed.md``. Data: ``mr``
from ``$TEXTPIPE_DATASETS`` (train 9,596 rows, test 1,066), a 1,000,000-row
file sampled (seeded, with replacement) from the mr + subj training rows as
``bench/memory.py`` does, and a 100,000-line text file sampled the same way
(prediction input for whole processes: textpipe vs a pickled TF-IDF + LR). Needs the ``bench`` extra (``fasttext-wheel``,
``scikit-learn``). Timings on a shared machine are noisy: the ratios, measured
side by side in this one run, are what count. Every process runs with one
torch thread (``OMP_NUM_THREADS=1`` unless set): on 2 shared cores, torch's
default of one OpenMP thread per core made training 5-10x slower whenever
another job held a core (spinning threads wait for each other).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported; children inherit it

import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from memory import sample_rows, write_sample  # noqa: E402

from textpipe.core.collate import Batch, pad_fraction  # noqa: E402
from textpipe.text.dataset import TextClassificationDataset  # noqa: E402
from textpipe.text.loader import make_loader  # noqa: E402
from textpipe.core.models import ModelConfig, build_model  # noqa: E402
from textpipe.bundle.predict import Predictor  # noqa: E402
from textpipe.text.sources import read_examples  # noqa: E402
from textpipe.text.tokenizer import Tokenizer  # noqa: E402
from textpipe.core.kernels import torch_ops_only  # noqa: E402
from textpipe.core.optim import make_optimizers  # noqa: E402
from textpipe.core.train import TrainConfig, train_step  # noqa: E402
from textpipe.text.vocab import build_vocab  # noqa: E402

# The benchmark datasets (mr, subj, trec6): TEXTPIPE_DATASETS, or the project CI's folder beside the clone.
SHARED = Path(os.environ.get("TEXTPIPE_DATASETS", ROOT.parent / "shared" / "datasets"))
MR_TRAIN, MR_TEST = SHARED / "mr" / "train.csv", SHARED / "mr" / "test.csv"
WORK = ROOT / "runs" / "bench_speed"
DATA = ROOT / "data" / "bench"
RESULTS = ROOT / "bench" / "results"
BIG_ROWS = 1_000_000


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- tokenizing and loading -------------------------------------------------------


def tokenizer_speed(texts: list[str]) -> dict:
    """Tokens/s of each tokenizer alone (one process), and of a whole loader pass (read, tokenize, numericalize, collate) with 1 and 2 workers."""
    result = {}
    import spacy

    nlp = spacy.blank("en")
    seconds, docs = timed(lambda: [len(doc) for doc in nlp.tokenizer.pipe(texts)])
    result["spacy_pipe_reference"] = {"tokens_per_s": round(sum(docs) / seconds)}
    for name in ("spacy", "basic_english"):
        tok = Tokenizer(name)
        tok("warm up")
        seconds, lists = timed(lambda: list(tok.pipe(texts)))
        tokens = sum(map(len, lists))
        vocab = build_vocab(lists)
        entry = {"tokenizer_only_tokens_per_s": round(tokens / seconds)}
        if name == "spacy":  # the first pass filled the chunk memo; a second pass reads it
            entry["second_pass_tokens_per_s"] = round(tokens / timed(lambda: list(tok.pipe(texts)))[0])
        for workers in (1, 2):
            loader = make_loader(TextClassificationDataset(MR_TRAIN, tok, vocab), 256, num_workers=workers)
            seconds, n = timed(lambda: sum(int(b.lengths.sum()) for b in loader))
            entry[f"loader_{workers}_workers_tokens_per_s"] = round(n / seconds)
        result[name] = entry
    return result


def loader_speed(tok: Tokenizer, vocab, labels: list[str], cache_dir: Path) -> dict:
    """Training batches (32 rows) per second: tokenizing every epoch vs from the warm cache; pad fraction bucketed vs not."""
    text = make_loader(TextClassificationDataset(MR_TRAIN, tok, vocab, labels), 32, shuffle_buffer=100_000)
    text_s, text_batches = timed(lambda: sum(1 for _ in text))
    warm = TextClassificationDataset(MR_TRAIN, tok, vocab, labels, cache_dir=cache_dir)
    cached = make_loader(warm, 32, shuffle_buffer=100_000, bucket=True)
    cached_s, cached_batches = timed(lambda: sum(1 for _ in cached))
    plain = make_loader(warm, 32, shuffle_buffer=100_000)
    return {
        "text_path_batches_per_s": round(text_batches / text_s),
        "warm_cache_bucketed_batches_per_s": round(cached_batches / cached_s),
        "pad_fraction_unbucketed": round(pad_fraction(plain), 4),
        "pad_fraction_bucketed": round(pad_fraction(cached), 4),
    }


# --- training ----------------------------------------------------------------------


def train_rows_per_s(model_config: ModelConfig, batches, seconds_cap: float = 4.0, closed_form: bool = True) -> float:
    """Rows/s of training steps over ``batches`` (an iterable, consumed), stopping after ``seconds_cap``.

    ``closed_form=False`` trains the bag model with autograd's own sparse gradient instead of its closed-form backward.
    """
    torch.manual_seed(0)
    model = build_model(model_config)
    model.train()
    if hasattr(model.pool, "closed_form"):
        model.pool.closed_form = closed_form
    optimizers = make_optimizers(model, TrainConfig())
    loss_fn = torch.nn.CrossEntropyLoss()
    rows, start = 0, time.perf_counter()
    for batch in batches:
        train_step(model, batch, optimizers, loss_fn)
        rows += len(batch)
        if time.perf_counter() - start > seconds_cap:
            break
    return rows / (time.perf_counter() - start)


def cached_batches(tok, vocab, labels, cache_dir: Path, batch_size: int, epochs: int):
    ds = TextClassificationDataset(MR_TRAIN, tok, vocab, labels, cache_dir=cache_dir)
    loader = make_loader(ds, batch_size, shuffle_buffer=100_000, bucket=True)  # what `make train` iterates
    for epoch in range(epochs):
        loader.dataset.set_epoch(epoch)
        yield from loader


def plain_recipe_batches(tok, vocab, labels, batch_size: int, epochs: int, pretokenized: bool):
    """The tutorial recipe: a Python collate_fn turning each batch of (label, text) into tensors with pad_sequence."""
    rows = [(ex.label, ex.text) for ex in read_examples(MR_TRAIN)]
    index = {label: i for i, label in enumerate(labels)}
    if pretokenized:
        rows = [(label, vocab(tok(text)) or [1]) for label, text in rows]

    def collate(batch):
        seqs = [torch.tensor(x if pretokenized else (vocab(tok(x)) or [1]), dtype=torch.long) for _, x in batch]
        ids = pad_sequence(seqs, batch_first=True, padding_value=0)
        lengths = torch.tensor([len(s) for s in seqs])
        mask = torch.arange(ids.shape[1]) < lengths[:, None]
        return Batch(ids, lengths, mask, torch.tensor([index[label] for label, _ in batch]))

    loader = DataLoader(rows, batch_size=batch_size, shuffle=True, collate_fn=collate, generator=torch.Generator().manual_seed(0))
    for _ in range(epochs):
        yield from loader


def training_speed(tok, vocab, labels, cache_dir: Path) -> dict:
    base = dict(vocab_size=len(vocab), num_classes=len(labels))
    per_model = {}
    for name in ("bag", "cnn", "gru", "transformer"):
        per_model[name] = round(train_rows_per_s(ModelConfig(name=name, **base), cached_batches(tok, vocab, labels, cache_dir, 32, 50), 3.0))
        log(f"train rows/s {name}: {per_model[name]}")
    default = ModelConfig(**base)
    at_512 = {
        "warm_cache": round(train_rows_per_s(default, cached_batches(tok, vocab, labels, cache_dir, 512, 50), 5.0)),
        "plain_recipe_tokenizing": round(train_rows_per_s(default, plain_recipe_batches(tok, vocab, labels, 512, 50, False), 5.0)),
        "plain_recipe_pretokenized": round(train_rows_per_s(default, plain_recipe_batches(tok, vocab, labels, 512, 50, True), 5.0)),
    }
    return {"per_model_batch_32_rows_per_s": per_model, "default_model_batch_512_rows_per_s": at_512}


BAG_STEP_ROUNDS = 3
# main when issue 18 was filed: its "today's" batch-512 rate is this commit's step, loader included.
FILED_COMMIT = "99b5310"
# Run in that commit's tree (its own bench/speed.py, textpipe and cache): rows/s of its train step, warm cache.
FILED_STEP = """
import sys
sys.path[:0] = ["{tree}", "{tree}/bench"]
import speed
from pathlib import Path
from textpipe.core.models import ModelConfig
from textpipe.text.sources import read_examples
from textpipe.text.tokenizer import Tokenizer
from textpipe.text.vocab import build_vocab
speed.MR_TRAIN = Path("{mr_train}")  # that tree has no benchmark datasets beside it
tok = Tokenizer("spacy")
rows = list(read_examples(speed.MR_TRAIN))
vocab, labels = build_vocab(tok.pipe(ex.text for ex in rows)), sorted({{ex.label for ex in rows}})
config = ModelConfig(vocab_size=len(vocab), num_classes=len(labels))
batches = lambda: speed.cached_batches(tok, vocab, labels, speed.WORK / "bench-cache", {batch_size}, 50)
speed.train_rows_per_s(config, batches(), 1.0)  # builds the cache, warms up
print(speed.train_rows_per_s(config, batches(), 3.0))
"""


def filed_tree() -> Path | None:
    """The code at :data:`FILED_COMMIT`, unpacked once from git history under WORK (None without git or that commit)."""
    tree = WORK / f"code-{FILED_COMMIT}"
    if not (tree / "textpipe").is_dir():
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", FILED_COMMIT], capture_output=True)
        if archive.returncode != 0:
            log(f"no commit {FILED_COMMIT} in this clone: the step as issue 18 found it is not measured")
            return None
        tree.mkdir(parents=True, exist_ok=True)
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def filed_rows_per_s(tree: Path, batch_size: int) -> float:
    code = FILED_STEP.format(tree=tree, batch_size=batch_size, mr_train=MR_TRAIN)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tree, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if out.returncode != 0:
        sys.exit(f"the code at {FILED_COMMIT} failed:\n{out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def bag_step_speed(tok, vocab, labels, cache_dir: Path) -> dict:
    """Bag model train rows/s, warm cache, alternated ``BAG_STEP_ROUNDS`` times (medians): today's step
    (closed-form table backward, C row kernels), the same in torch ops only, the step before issue 18
    emulated on today's loader (autograd's sparse gradient, torch ops), and the code as issue 18 found it
    (commit :data:`FILED_COMMIT`, its own loader and step, in a child process)."""
    config = ModelConfig(vocab_size=len(vocab), num_classes=len(labels))
    ways = {"kernels": (True, False), "torch_ops": (True, True), "before": (False, True)}  # name: (closed_form, torch ops only)
    tree = filed_tree()
    out = {}
    for batch_size in (512, 32):
        runs: dict[str, list[float]] = {name: [] for name in [*ways, *(["at_filing"] if tree else [])]}
        for _ in range(BAG_STEP_ROUNDS):
            for name, (closed_form, torch_only) in ways.items():
                batches = cached_batches(tok, vocab, labels, cache_dir, batch_size, 50)
                with torch_ops_only() if torch_only else contextlib.nullcontext():
                    runs[name].append(train_rows_per_s(config, batches, 3.0, closed_form=closed_form))
            if tree:
                runs["at_filing"].append(filed_rows_per_s(tree, batch_size))
        medians = {name: round(statistics.median(v)) for name, v in runs.items()}
        ratios = {"ratio": round(medians["kernels"] / medians["before"], 2)}
        if tree:
            ratios["ratio_at_filing"] = round(medians["kernels"] / medians["at_filing"], 2)
        out[f"batch_{batch_size}"] = {**medians, **ratios, "runs": {name: [round(x) for x in v] for name, v in runs.items()}}
        log(f"bag step batch {batch_size}: {out[f'batch_{batch_size}']}")
    return out


def big_file_epochs(tok) -> dict:
    """First epoch (tokenizing the file into a fresh cache, then one pass) vs an epoch from the warm cache, on 1M rows."""
    rows = sample_rows()
    big = write_sample(DATA / f"train_{BIG_ROWS}.csv", rows, BIG_ROWS, seed=BIG_ROWS)
    labels = sorted({label for label, _ in rows})
    vocab = build_vocab(tok.pipe(text for _, text in rows))  # every sampled row is one of these
    cache_dir = Path(tempfile.mkdtemp(prefix="cache-", dir=WORK))
    config = ModelConfig(vocab_size=len(vocab), num_classes=len(labels))

    def epoch(seed: int) -> tuple[float, float]:
        start = time.perf_counter()
        # A fresh tokenizer: its chunk memo starts empty, as in a new process.
        fresh = Tokenizer(tok.name, tok.lower)
        ds = TextClassificationDataset(big, fresh, vocab, labels, cache_dir=cache_dir)
        built = time.perf_counter() - start
        train_rows_per_s(config, iter(make_loader(ds, 512, shuffle_buffer=100_000, bucket=True, seed=seed)), seconds_cap=1e9)
        return time.perf_counter() - start, built

    first, build = epoch(0)
    log(f"1M first epoch {first:.1f}s (cache build {build:.1f}s)")
    warm, _ = epoch(1)
    log(f"1M warm epoch {warm:.1f}s")
    shutil.rmtree(cache_dir, ignore_errors=True)
    return {"rows": BIG_ROWS, "batch_size": 512, "first_epoch_s": round(first, 1), "of_which_cache_build_s": round(build, 1),
            "warm_epoch_s": round(warm, 1), "speedup": round(first / warm, 2)}


# --- whole processes -------------------------------------------------------------


def run_process(cmd: list[str], env: dict | None = None) -> dict:
    """Wall time and peak RSS of a child process; its last stdout line is parsed as JSON when it is JSON."""
    start = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})}, cwd=ROOT)
    stdout, stderr = child.communicate()
    wall = time.perf_counter() - start
    if child.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{stderr.decode()[-2000:]}")
    out = {"wall_s": round(wall, 2)}
    lines = stdout.decode().strip().splitlines()
    if lines and lines[-1].startswith("{"):
        out.update(json.loads(lines[-1]))
    return out


def rss_wrapper(cmd: list[str]) -> list[str]:
    """The command run under a tiny Python parent that reports the child's peak RSS (ru_maxrss of its children)."""
    code = (
        "import json, resource, subprocess, sys\n"
        "lines = subprocess.run(sys.argv[1:], check=True, stdout=subprocess.PIPE, text=True).stdout.strip().splitlines()\n"
        "out = json.loads(lines[-1]) if lines and lines[-1].startswith('{') else {}\n"
        "out['peak_rss_mb'] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)\n"
        "print(json.dumps(out))\n"
    )
    return [sys.executable, "-c", code, *cmd]


FASTTEXT = """
import csv, json, sys, tempfile, fasttext
train, test = sys.argv[1], sys.argv[2]
def rows(path):
    with open(path, encoding="utf-8", newline="") as f:
        return [(r["label"], r["text"].replace("\\n", " ")) for r in csv.DictReader(f)]
with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
    f.writelines(f"__label__{label} {text}\\n" for label, text in rows(train))
model = fasttext.train_supervised(input=f.name, wordNgrams=2, epoch=25, verbose=0)
test_rows = rows(test)
labels, _ = model.predict([text for _, text in test_rows])
correct = sum(pred[0] == f"__label__{label}" for pred, (label, _) in zip(labels, test_rows))
print(json.dumps({"test_accuracy": round(correct / len(test_rows), 4)}))
"""


def end_to_end() -> dict:
    """``python -m textpipe train`` on mr (default config, cold cache) vs a Python process training and scoring fastText."""
    out = {}
    cache = WORK / "e2e-cache"
    shutil.rmtree(cache, ignore_errors=True)
    variants = (("textpipe_default", []), ("textpipe_no_checkpoints_warm_cache", ["--keep-checkpoints", "0"]), ("textpipe_no_refit_warm_cache", ["--no-refit"]))
    for label, extra in variants:
        run_dir = WORK / label
        cmd = [sys.executable, "-m", "textpipe", "train", "--train", str(MR_TRAIN), "--test", str(MR_TEST), "--out", str(run_dir), "--overwrite", "--quiet",
               "--set", f"data.cache_dir={cache}", *extra]
        result = run_process(rss_wrapper(cmd))
        metrics = json.loads((run_dir / "metrics.json").read_text())
        result.pop("test", None)
        refit_epochs = metrics["refit"]["epochs"] if "refit" in metrics else 0
        out[label] = {**result, "test_accuracy": metrics["test"]["accuracy"], "epochs": len(metrics["history"]), "refit_epochs": refit_epochs}
        log(f"{label}: {out[label]}")
    out["fasttext"] = run_process(rss_wrapper([sys.executable, "-c", FASTTEXT, str(MR_TRAIN), str(MR_TEST)]))
    log(f"fasttext: {out['fasttext']}")
    t, f = out["textpipe_default"], out["fasttext"]
    out["wall_ratio_default_to_fasttext"] = round(t["wall_s"] / f["wall_s"], 2)
    for label, _ in variants[1:]:
        out[f"wall_ratio_{label.removeprefix('textpipe_')}_to_fasttext"] = round(out[label]["wall_s"] / f["wall_s"], 2)
    return out


DDP_SEEDS = (0, 1, 2)  # one mr test score swings by a point or two with the seed alone, so compare means


def ddp_speed() -> dict:
    """``python -m textpipe train`` in 1 process vs ``torchrun --nproc_per_node=2`` (gloo), no checkpoints,
    each with a fresh cache, for three seeds; wall times are seed 0's."""
    out = {}
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    for nproc in (1, 2):
        runs = []
        for seed in DDP_SEEDS:
            run_dir, cache = WORK / f"ddp{nproc}", WORK / f"ddp-cache{nproc}"
            shutil.rmtree(cache, ignore_errors=True)
            launch = [sys.executable, "-m", "textpipe"] if nproc == 1 else [torchrun, "--standalone", f"--nproc_per_node={nproc}", "-m", "textpipe"]
            result = run_process([*launch, "train", "--train", str(MR_TRAIN), "--test", str(MR_TEST), "--out", str(run_dir), "--overwrite", "--quiet",
                                  "--keep-checkpoints", "0", "--seed", str(seed), "--set", f"data.cache_dir={cache}"])
            metrics = json.loads((run_dir / "metrics.json").read_text())
            runs.append({"seed": seed, "wall_s": result["wall_s"], "test_accuracy": metrics["test"]["accuracy"], "epochs": len(metrics["history"])})
            log(f"ddp nproc {nproc}: {runs[-1]}")
        out[f"nproc_{nproc}"] = {**runs[0], "runs": runs, "mean_test_accuracy": round(statistics.mean(r["test_accuracy"] for r in runs), 6)}
    one, two = out["nproc_1"], out["nproc_2"]
    out["speedup"] = round(one["wall_s"] / two["wall_s"], 2)
    out["accuracy_difference_points"] = round(100 * (two["mean_test_accuracy"] - one["mean_test_accuracy"]), 2)
    return out


def predict_speed(bundle_dir: Path) -> dict:
    """Bulk predict rows/s on mr test vs TF-IDF + logistic regression; single-text latency."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    test = [ex.text for ex in read_examples(MR_TEST)]
    predictor = Predictor.load(bundle_dir)
    predictor.probabilities(["warm up the model"])
    first = timed(predictor.probabilities, test)[0]  # the tokenizer's chunk memo starts empty
    bulk = min(timed(predictor.probabilities, test)[0] for _ in range(5))
    train = list(read_examples(MR_TRAIN))
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=1)
    lr = LogisticRegression(max_iter=1000).fit(vectorizer.fit_transform([ex.text for ex in train]), [ex.label for ex in train])
    tfidf = min(timed(lambda: lr.predict(vectorizer.transform(test)))[0] for _ in range(5))
    latencies = []
    for text in test[:300]:
        seconds, _ = timed(predictor.predict, [text])
        latencies.append(seconds * 1000)
    latencies.sort()
    return {
        "rows": len(test),
        "bulk_rows_per_s": round(len(test) / bulk),
        "first_call_rows_per_s": round(len(test) / first),
        "tfidf_lr_rows_per_s": round(len(test) / tfidf),
        "ratio": round(tfidf / bulk, 2),
        "single_text_ms_p50": round(statistics.median(latencies), 3),
        "single_text_ms_p99": round(latencies[int(0.99 * (len(latencies) - 1))], 3),
    }


PROCESS_ROWS, PROCESS_ROUNDS = 100_000, 3
TFIDF_PREDICT = """
import pickle, sys
model = pickle.load(open(sys.argv[1], "rb"))
lines = open(sys.argv[2], encoding="utf-8").read().splitlines()
sys.stdout.write("\\n".join(model.predict(lines)) + "\\n")
"""


def predict_process_speed(bundle_dir: Path) -> dict:
    """Issue 18: one ``textpipe predict --input`` process labelling 100k lines (load included) vs one process
    that unpickles a TF-IDF + LR pipeline and labels the same lines; ``PROCESS_ROUNDS`` runs each, alternated; medians."""
    lines = write_lines(DATA / f"predict_{PROCESS_ROWS}.txt", sample_rows(), PROCESS_ROWS, seed=PROCESS_ROWS)
    pickled = write_tfidf_pipeline(WORK / "tfidf_lr.pkl")
    commands = {
        "textpipe": [sys.executable, "-m", "textpipe", "predict", "--model", str(bundle_dir), "--input", str(lines), "--format", "text"],
        "tfidf_lr": [sys.executable, "-c", TFIDF_PREDICT, str(pickled), str(lines)],
    }
    runs: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(PROCESS_ROUNDS):
        for name, command in commands.items():
            runs[name].append(run_process(command)["wall_s"])
    walls = {name: statistics.median(v) for name, v in runs.items()}
    rows_per_s = {name: round(PROCESS_ROWS / wall) for name, wall in walls.items()}
    return {"rows": PROCESS_ROWS, "rounds": PROCESS_ROUNDS, "wall_s": walls, "rows_per_s": rows_per_s,
            "ratio": round(rows_per_s["textpipe"] / rows_per_s["tfidf_lr"], 2), "runs": runs}


def write_lines(path: Path, rows: list[tuple[str, str]], n: int, seed: int) -> Path:
    """``n`` texts drawn (seeded, with replacement) from ``rows``, one per line: prediction input."""
    if not path.is_file():
        rng = random.Random(seed)
        tmp = path.with_name(path.name + ".tmp")
        # No line break inside a text (str.splitlines' sense), so both processes see the same n lines.
        tmp.write_text("".join(" ".join(rng.choice(rows)[1].splitlines()) + "\n" for _ in range(n)), encoding="utf-8")
        os.replace(tmp, path)
    return path


def write_tfidf_pipeline(path: Path) -> Path:
    """A pickled scikit-learn TF-IDF (word 1-2 grams, sublinear tf) + logistic regression (C=10) pipeline trained on mr."""
    import pickle

    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    train = list(read_examples(MR_TRAIN))
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), LogisticRegression(C=10, max_iter=1000))
    model.fit([ex.text for ex in train], [ex.label for ex in train])
    path.write_bytes(pickle.dumps(model))
    return path


# --- report ------------------------------------------------------------------------


def markdown(r: dict) -> str:
    e, p, l, t, b, pp = r["end_to_end"], r["predict"], r["loader"], r["training"], r["big_file"], r["predict_process"]
    at512 = t["default_model_batch_512_rows_per_s"]
    lines = [
        "# textpipe speed (bench/speed.py, one run)",
        "",
        f"Machine: {r['machine']}. Shared with other jobs: absolute numbers are noisy, the ratios were measured side by side.",
        "",
        "| measure | textpipe | baseline | ratio / note |",
        "|---|---|---|---|",
        f"| whole train process on mr, default config (cold cache) | {e['textpipe_default']['wall_s']} s, acc {e['textpipe_default']['test_accuracy']}, {e['textpipe_default']['epochs']} epochs + refit {e['textpipe_default']['refit_epochs']}, peak RSS {e['textpipe_default']['peak_rss_mb']} MB | fastText (bigrams, 25 epochs): {e['fasttext']['wall_s']} s, acc {e['fasttext']['test_accuracy']}, peak RSS {e['fasttext']['peak_rss_mb']} MB | {e['wall_ratio_default_to_fasttext']}x (target <= 2x) |",
        f"| same, --keep-checkpoints 0, warm cache | {e['textpipe_no_checkpoints_warm_cache']['wall_s']} s, acc {e['textpipe_no_checkpoints_warm_cache']['test_accuracy']}, peak RSS {e['textpipe_no_checkpoints_warm_cache']['peak_rss_mb']} MB | | {e['wall_ratio_no_checkpoints_warm_cache_to_fasttext']}x |",
        f"| same, --no-refit, warm cache | {e['textpipe_no_refit_warm_cache']['wall_s']} s, acc {e['textpipe_no_refit_warm_cache']['test_accuracy']}, {e['textpipe_no_refit_warm_cache']['epochs']} epochs, peak RSS {e['textpipe_no_refit_warm_cache']['peak_rss_mb']} MB | | {e['wall_ratio_no_refit_warm_cache_to_fasttext']}x |",
        f"| bulk predict rows/s (mr test, {p['rows']} rows; best of 5 calls, like TF-IDF + LR) | {p['bulk_rows_per_s']} (first call of a freshly loaded model, empty chunk memo: {p['first_call_rows_per_s']}) | TF-IDF + LR: {p['tfidf_lr_rows_per_s']} | {p['ratio']}x (target >= 1); first call {round(p['first_call_rows_per_s'] / p['tfidf_lr_rows_per_s'], 2)}x |",
        f"| one `textpipe predict --input` process, {pp['rows']:,} lines (load included; median of {pp['rounds']}, alternated) | {pp['wall_s']['textpipe']} s, {pp['rows_per_s']['textpipe']:,} rows/s | one process unpickling TF-IDF + LR: {pp['wall_s']['tfidf_lr']} s, {pp['rows_per_s']['tfidf_lr']:,} rows/s | {pp['ratio']}x rows/s (issue 18 target >= 1) |",
        f"| single-text predict latency | p50 {p['single_text_ms_p50']} ms, p99 {p['single_text_ms_p99']} ms | | |",
        f"| pad fraction, mr train, batch 32 | bucketed {l['pad_fraction_bucketed']} | unbucketed {l['pad_fraction_unbucketed']} | target <= 0.10 |",
        f"| 1M-row epoch (bag, batch 512) | warm cache {b['warm_epoch_s']} s | first epoch {b['first_epoch_s']} s (cache build {b['of_which_cache_build_s']} s) | {b['speedup']}x (target >= 3x) |",
        f"| default model train rows/s, batch 512 | warm cache {at512['warm_cache']} | plain recipe (pad_sequence collate_fn tokenizing) {at512['plain_recipe_tokenizing']}; pre-tokenized lists {at512['plain_recipe_pretokenized']} | {round(at512['warm_cache'] / at512['plain_recipe_tokenizing'], 2)}x / {round(at512['warm_cache'] / at512['plain_recipe_pretokenized'], 2)}x (target >= 2x) |",
        f"| loader batches/s (batch 32, mr train) | warm cache, bucketed {l['warm_cache_bucketed_batches_per_s']} | tokenizing every epoch {l['text_path_batches_per_s']} | {round(l['warm_cache_bucketed_batches_per_s'] / l['text_path_batches_per_s'], 1)}x |",
    ]
    tokenizers = dict(r["tokenizers"])
    reference = tokenizers.pop("spacy_pipe_reference")["tokens_per_s"]
    for name, s in tokenizers.items():
        alone = f"alone {s['tokenizer_only_tokens_per_s']:,}"
        note = ""
        if "second_pass_tokens_per_s" in s:
            alone = f"alone, first pass {s['tokenizer_only_tokens_per_s']:,}; second pass (chunk memo warm) {s['second_pass_tokens_per_s']:,}"
            note = f"spaCy's own `nlp.tokenizer.pipe`: {reference:,}"
        lines.append(f"| tokens/s {name} | {alone} | loader pass: 1 worker {s['loader_1_workers_tokens_per_s']:,}, 2 workers {s['loader_2_workers_tokens_per_s']:,} | {note} |")
    s512, s32 = r["bag_step"]["batch_512"], r["bag_step"]["batch_32"]
    lines.append(f"| bag train rows/s: closed-form table backward + C row kernels (warm cache; median of {BAG_STEP_ROUNDS}, alternated) | batch 512: {s512['kernels']:,}; batch 32: {s32['kernels']:,} (same in torch ops only: {s512['torch_ops']:,}; {s32['torch_ops']:,}) | the step before issue 18 on today's loader (autograd's sparse gradient, torch ops): {s512['before']:,}; {s32['before']:,} | {s512['ratio']}x; {s32['ratio']}x (issue 18 target: batch 512 >= 2x) |")
    if "at_filing" in s512:
        lines.append(f"| same, against the code as issue 18 found it (commit {FILED_COMMIT}: its loader and step, in a child process, alternated) | batch 512: {s512['kernels']:,}; batch 32: {s32['kernels']:,} | commit {FILED_COMMIT}: {s512['at_filing']:,}; {s32['at_filing']:,} | {s512['ratio_at_filing']}x; {s32['ratio_at_filing']}x |")
    per = ", ".join(f"{k} {v:,}" for k, v in t["per_model_batch_32_rows_per_s"].items())
    lines.append(f"| train rows/s per model (batch 32, warm cache) | {per} | | |")
    d = r["ddp"]
    accs = {n: ", ".join(f"{r['test_accuracy']:.4f}" for r in d[f"nproc_{n}"]["runs"]) for n in (1, 2)}
    lines.append(f"| `make train NPROC=2` on mr (torchrun, gloo, no checkpoints; seeds {', '.join(map(str, DDP_SEEDS))}) | 2 processes: {d['nproc_2']['wall_s']} s (seed 0), acc {accs[2]} (mean {d['nproc_2']['mean_test_accuracy']:.4f}) | 1 process: {d['nproc_1']['wall_s']} s, acc {accs[1]} (mean {d['nproc_1']['mean_test_accuracy']:.4f}) | speed-up {d['speedup']}x; mean accuracy {d['accuracy_difference_points']:+} points (target within 1) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    if not MR_TRAIN.is_file():
        sys.exit(f"needs the benchmark datasets in {SHARED}")
    WORK.mkdir(parents=True, exist_ok=True)
    DATA.mkdir(parents=True, exist_ok=True)
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, torch {torch.__version__}, {torch.get_num_threads()} torch threads",
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    log("end to end")
    result["end_to_end"] = end_to_end()
    log("ddp")
    result["ddp"] = ddp_speed()
    log("predict")
    result["predict"] = predict_speed(WORK / "textpipe_default")
    log("predict process")
    result["predict_process"] = predict_process_speed(WORK / "textpipe_default")
    log(f"predict process: {result['predict_process']}")
    texts = [ex.text for ex in read_examples(MR_TRAIN)]
    log("tokenizers")
    result["tokenizers"] = tokenizer_speed(texts)
    tok = Tokenizer("spacy")
    vocab = build_vocab(tok.pipe(texts))
    labels = sorted({ex.label for ex in read_examples(MR_TRAIN)})
    cache_dir = WORK / "bench-cache"
    log("loader")
    result["loader"] = loader_speed(tok, vocab, labels, cache_dir)
    log("training")
    result["training"] = training_speed(tok, vocab, labels, cache_dir)
    log("bag step")
    result["bag_step"] = bag_step_speed(tok, vocab, labels, cache_dir)
    log("1M rows")
    result["big_file"] = big_file_epochs(tok)
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "speed.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "speed.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
