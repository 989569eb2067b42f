"""A new user's first hour (issue 16): own files with other column names and integer labels,
no test file, stdin, wrong flags, hints, resume, the Makefile, and library calls without side effects."""

import csv
import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import cli_here, write_csv
from textpipe import cli
from textpipe.run.config import PipelineConfig
from textpipe.run.phases import train_files

REPO = Path(__file__).resolve().parents[2]
WORDS = {1: "awful dull boring tedious", 2: "fine okay average decent", 10: "superb gorgeous witty great"}


def textpipe(*args, input=None, cwd=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "textpipe", *map(str, args)], capture_output=True, text=True, input=input, cwd=cwd, env=env)


def reviews(n: int, seed: int) -> list[tuple[int, str, int]]:
    """(id, review, stars) rows: stars 1, 2 or 10 decide the words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        stars = (1, 2, 10)[i % 3]
        words = rng.choices(WORDS[stars].split(), k=3) + rng.choices("the a movie film plot it was".split(), k=3)
        rng.shuffle(words)
        rows.append((i, " ".join(words), stars))
    return rows


def write_reviews(path: Path, rows, delimiter=",") -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps({"id": i, "review": t, "stars": s}) + "\n" for i, t, s in rows), encoding="utf-8")
        return path
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(["id", "review", "stars"])
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A bundle trained through the CLI on a review,stars CSV, without --test."""
    folder = tmp_path_factory.mktemp("first-hour")
    train = write_reviews(folder / "train.csv", reviews(240, seed=1))
    out = folder / "run"
    result = textpipe("train", "--train", train, "--out", out, "--text-columns", "review", "--label-column", "stars",
                      "--tokenizer", "whitespace", "--keep-checkpoints", "0", "--epochs", "60")
    assert result.returncode == 0, result.stderr
    return {"folder": folder, "train": train, "out": out, "result": result}


# 1. Columns everywhere; the bundle remembers how its training file was read.


def test_every_command_reads_other_columns_and_the_bundle_remembers_them(bundle, tmp_path):
    out, rows = bundle["out"], reviews(30, seed=5)
    tsv, jsonl = write_reviews(tmp_path / "test.tsv", rows, "\t"), write_reviews(tmp_path / "test.jsonl", rows)
    predicted = textpipe("predict", "--model", out, "--input", tsv, "--format", "csv")
    assert predicted.returncode == 0, predicted.stderr
    assert len(predicted.stdout.splitlines()) == 31
    evaluated = textpipe("evaluate", "--model", out, "--data", jsonl, "--quiet")  # no column flags: the bundle's
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["accuracy"] > 0.9
    assert textpipe("embed", "--model", out, "--input", jsonl).stdout.count("\n") == 30
    shown = textpipe("vocab", "show", out, "--data", tsv, "--json")
    assert json.loads(shown.stdout)["coverage"] == 1.0
    stats = textpipe("datasets", "stats", tsv, "--text-columns", "review", "--label-column", "stars", "--json")
    assert json.loads(stats.stdout)["test.tsv"]["labels"] == {"1": 10, "2": 10, "10": 10}
    built = textpipe("vocab", "build", jsonl, "--text-columns", "review", "--out", tmp_path / "v.json", "--tokenizer", "whitespace")
    assert built.returncode == 0, built.stderr


# 2. Training without a test file.


def test_train_without_test_scores_the_held_out_dev_rows_and_says_so(bundle):
    stdout = bundle["result"].stdout
    assert stdout.startswith("dev accuracy ")
    assert "no --test file: scored on the dev rows held out of" in stdout
    metrics = json.loads((bundle["out"] / "metrics.json").read_text())
    assert metrics["test"] is None and metrics["scored_on"].startswith("dev rows held out of")
    assert "refit" not in metrics  # the rows it is scored on stayed out of training
    held_out = 240 - json.loads((bundle["out"] / "run.json").read_text())["num_train"]
    assert 10 < held_out < 40 and metrics["overall"]["n"] == held_out  # about 1 row in 10
    assert "There was no test file" in (bundle["out"] / "report.md").read_text()


# 3. fastText's habits: a lone '-' reads stdin; empty stdin is no error.


def test_a_lone_dash_reads_stdin_and_empty_stdin_prints_nothing(bundle):
    result = textpipe("predict", "--model", bundle["out"], "-", "--format", "text", input="superb gorgeous film\nawful dull plot\n")
    assert result.returncode == 0, result.stderr
    assert [line.split(" ")[0] for line in result.stdout.splitlines()] == ["10", "1"]
    for args in (["-"], ["--input", "-"]):
        empty = textpipe("predict", "--model", bundle["out"], *args, input="")
        assert (empty.returncode, empty.stdout, empty.stderr) == (0, "", "")
    assert cli.main(["predict", "--model", str(bundle["out"])]) == 2  # no texts at all is still an error


# 4. A wrong flag on a subcommand.


def test_an_unknown_flag_gets_the_subcommands_usage_and_a_suggestion():
    result = cli_here("train", "--input", "a.csv", "--output", "runs/b")
    assert result.returncode == 2
    assert result.stderr.startswith("usage: textpipe train ")
    assert result.stderr.rstrip().endswith("did you mean --train / --out?")
    typo = textpipe("predict", "--model", "m", "--fromat", "csv")
    assert typo.stderr.startswith("usage: textpipe predict ") and "did you mean --format?" in typo.stderr


# 5. One meaning per flag: --arch in train; --model is a bundle (predict, evaluate, serve ...), never an architecture.


def test_train_takes_arch_and_model_is_not_an_architecture():
    arch = cli_here("train", "--arch", "cnn", "--print-config")
    assert arch.returncode == 0 and '\nname = "cnn"' in arch.stdout and arch.stderr == ""
    old = cli_here("train", "--model", "gru", "--print-config")
    assert old.returncode == 2 and old.stderr.rstrip().endswith("unrecognized arguments: --model gru; did you mean --arch?")


# 6. Hints where they help; errors before the config dump.


def test_wrong_header_hints_the_headers_own_names_before_any_config_dump(bundle, tmp_path):
    result = cli_here("train", "--train", bundle["train"], "--out", tmp_path / "r")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[0] == f"textpipe train: error: {bundle['train']}:1: header has no 'text' column (found: id, review, stars)"
    assert lines[1] == "hint: name the columns: --text-columns review --label-column stars"
    assert "effective config" not in result.stderr


def test_an_empty_text_hints_on_bad_row_skip(tmp_path):
    train = tmp_path / "t.csv"
    train.write_text("label,text\npos,good\nneg,\n", encoding="utf-8")
    result = cli_here("train", "--train", train, "--out", tmp_path / "r")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"textpipe train: error: {train}:3: empty text", "hint: --on-bad-row skip skips such rows and counts them"]


# 7. Resume for make users.


def test_the_resume_hint_works_as_printed_and_make_resume_exists(monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    hint = cli.resume_command(Path("runs/x"))
    assert hint.startswith(f"{sys.executable} -m textpipe train --resume runs/x")
    assert "(or: make resume OUT=runs/x)" in hint
    dry = make("-n", "resume", "OUT=runs/x")
    assert dry.stdout.strip().endswith("-m textpipe train --resume runs/x")


# 8. make evaluate without TEST: the model's own test file.


def test_evaluate_without_data_uses_the_recorded_test_file(bundle, tmp_path):
    no_test = textpipe("evaluate", "--model", bundle["out"])
    assert no_test.returncode == 2
    assert "records no test file of its own" in no_test.stderr and "hint: give the labelled file" in no_test.stderr
    run = json.loads((bundle["out"] / "run.json").read_text())
    copy = tmp_path / "copy"
    shutil.copytree(bundle["out"], copy)
    run["data"]["test"] = str(write_reviews(tmp_path / "own_test.csv", reviews(30, seed=8)))
    (copy / "run.json").write_text(json.dumps(run))
    result = textpipe("evaluate", "--model", copy, "--quiet")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["n"] == 30 and (copy / "eval-own_test" / "report.md").is_file()
    assert "--data" not in make("-n", "evaluate", "MODEL=runs/x").stdout


# 9. Integer labels, a missing output folder, $ in make predict, --help, make help.


def test_integer_labels_sort_as_numbers(bundle):
    assert json.loads((bundle["out"] / "bundle.json").read_text())["labels"] == ["1", "2", "10"]  # label_order: tests/run/test_pipeline.py


def test_output_into_a_missing_folder_names_the_folder_not_a_temp_file(bundle, tmp_path):
    result = cli_here("predict", "--model", bundle["out"], "good", "--output", tmp_path / "no" / "x.csv")
    assert result.returncode == 2
    assert f"folder {tmp_path / 'no'} does not exist" in result.stderr and ".tmp" not in result.stderr


def test_make_predict_passes_text_with_dollar_and_quotes_untouched():
    result = make("-s", "predict", "PY=echo", """TEXT=costs $HOME "a" it's""")
    assert result.stdout.strip().endswith("""costs $HOME "a" it's""")


def test_help_has_no_rst_markup_and_make_help_lines_up():
    assert "``" not in textpipe("--help").stdout
    lines = make("-s", "help").stdout.splitlines()
    targets = [line for line in lines if line.startswith("  make ")]
    variables = lines[lines.index("variables:") + 1 : -1]
    column = lambda line: re.match(r"^  (\S.*?)\s{2,}\S", line).end() - 1  # noqa: E731  where the description starts
    assert len({column(line) for line in targets}) == 1 and len(targets) > 8
    assert len({column(line) for line in variables}) == 1 and len(variables) > 8


# 10. Library calls: no prints, no ./data/cache.


def test_train_files_prints_nothing_and_writes_no_cache_in_the_working_folder(tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.chdir(tmp_path)
    train = write_reviews(tmp_path / "train.csv", reviews(60, seed=3))
    config = PipelineConfig.from_dict({"data": {"source": {"text_columns": ["review"], "label_column": "stars"}},
                                       "tokenizer": {"name": "whitespace"}, "train": {"epochs": 2, "keep_checkpoints": 0}})
    caplog.set_level(logging.INFO, logger="textpipe")
    assert logging.getLogger("textpipe").handlers == []  # cli.main() leaves no handler behind
    train_files(train, None, tmp_path / "run", config=config)
    assert capsys.readouterr().err == ""
    assert not (tmp_path / "data").exists()
    assert "epoch 1:" in caplog.text  # the progress is on the logger, for a caller who wants it
    assert any(Path(os.environ["TEXTPIPE_CACHE"]).iterdir())  # "auto": the user's cache folder (here the tests')
    off = cli_here("train", "--set", "data.cache_dir=false", "--print-config")  # as the README says
    assert off.returncode == 0 and "cache_dir = false" in off.stdout


def make(*args, env=None):
    with tempfile.TemporaryDirectory() as folder:  # removed afterwards: tests leave nothing in /tmp
        stamp = Path(folder) / "textpipe-make-stamp"  # an up-to-date prerequisite instead of the real .venv
        stamp.touch()
        return subprocess.run(["make", "--no-print-directory", f"STAMP={stamp}", *args], capture_output=True, text=True, cwd=REPO, env=env)


def test_jsonl_keys_are_hinted_and_a_missing_test_file_fails_before_training(tmp_path):
    jsonl = write_reviews(tmp_path / "train.jsonl", reviews(30, seed=6))
    result = cli_here("train", "--train", jsonl, "--out", tmp_path / "r")
    assert result.returncode == 2
    assert result.stderr.splitlines()[1] == "hint: name the columns: --text-columns review --label-column stars"
    missing = cli_here("train", "--train", jsonl, "--test", tmp_path / "nope.csv", "--out", tmp_path / "r",
                       "--text-columns", "review", "--label-column", "stars")
    assert missing.returncode == 2
    assert missing.stderr == f"textpipe train: error: {tmp_path / 'nope.csv'}: no such file\n"  # nothing trained or logged first


# Issue 28: small things a user hits.


def test_a_mistyped_command_action_or_choice_gets_did_you_mean():
    assert cli_here("predcit").stderr.rstrip().endswith("did you mean predict?")
    assert cli_here("vocab", "shwo").stderr.rstrip().endswith("did you mean show?")
    assert cli_here("train", "--arch", "bagg").stderr.rstrip().endswith("did you mean bag?")
    assert cli_here("fit").stderr.rstrip().endswith("did you mean train?")  # another tool's word
    result = cli_here("predict", "--model", "m", "--fromat", "csv")
    assert result.returncode == 2 and "did you mean --format?" in result.stderr


def test_json_probs_are_sorted_most_likely_first_as_the_help_says(bundle):
    assert "probs most likely first" in " ".join(textpipe("predict", "--help").stdout.split())
    result = textpipe("predict", "--model", bundle["out"], "superb gorgeous witty", "awful dull boring", "fine okay decent plot")
    for line in result.stdout.splitlines():
        row = json.loads(line)
        values = list(row["probs"].values())
        assert values == sorted(values, reverse=True) and next(iter(row["probs"])) == row["label"]
    assert {next(iter(json.loads(line)["probs"])) for line in result.stdout.splitlines()} == {"1", "2", "10"}  # not the label order each time


def test_make_predict_input_reads_the_shipped_examples(bundle):
    examples = REPO / "data" / "examples" / "texts.txt"
    assert subprocess.run(["git", "check-ignore", "-q", str(examples)], cwd=REPO).returncode == 1  # shipped, not ignored
    result = make("-s", "predict", f"PY={sys.executable}", f"MODEL={bundle['out']}", "INPUT=data/examples/texts.txt", "FORMAT=text")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == len(examples.read_text().splitlines()) >= 10


def test_make_leaves_no_stamp_in_the_temporary_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the temporary folder, here one of this test's own
    make("-n", "help")
    assert list(tmp_path.iterdir()) == []


# Issue 28: mistakes that leave nothing behind.

QUICK = ("--tokenizer", "whitespace", "--epochs", "1", "--keep-checkpoints", "0", "--quiet")


def test_a_run_that_fails_its_checks_leaves_no_folder_and_the_hints_flag_then_works(tmp_path):
    train = write_reviews(tmp_path / "train.csv", reviews(60, seed=2))
    rows = train.read_text().splitlines()
    rows[40] = "39,,1"  # an empty text deep in the file: found by the vocabulary pass, after the run has begun
    train.write_text("\n".join(rows) + "\n")
    out = tmp_path / "runs" / "mine"
    first = cli_here("train", "--train", train, "--out", out, "--text-columns", "review", "--label-column", "id", *QUICK)
    assert first.returncode == 2 and first.stderr.endswith("hint: --on-bad-row skip skips such rows and counts them\n")
    assert not (tmp_path / "runs").exists()  # no staging folder, no empty folders it made
    skip = ("--on-bad-row", "skip", *QUICK)
    second = cli_here("train", "--train", train, "--out", out, "--text-columns", "review", "--label-column", "id", *skip)
    assert second.returncode == 2 and "(--text-columns review --label-column stars)" in second.stderr and not (tmp_path / "runs").exists()
    third = cli_here("train", "--train", train, "--out", out, "--text-columns", "review", "--label-column", "stars", *skip)
    assert third.returncode == 0, third.stderr
    assert (out / "bundle.json").is_file() and not (out / ".textpipe-run").exists()
    missing = cli_here("train", "--train", train, "--test", tmp_path / "nope.csv", "--out", tmp_path / "other", *skip)
    assert missing.returncode == 2 and not (tmp_path / "other").exists()


def test_a_failed_rerun_over_a_finished_run_keeps_it_and_leaves_no_staging(tmp_path, bundle):
    out = tmp_path / "run"
    shutil.copytree(bundle["out"], out)
    few = write_reviews(tmp_path / "few.csv", reviews(5, seed=3))  # too few rows to hold any out
    result = cli_here("train", "--train", few, "--out", out, "--overwrite", "--text-columns", "review", "--label-column", "stars", *QUICK)
    assert result.returncode == 2 and "hint: give a dev file: --dev FILE" in result.stderr
    assert (out / "bundle.json").is_file() and not (out / ".textpipe-run").exists()


def test_resume_refuses_every_flag_it_would_ignore_naming_them(bundle):
    for flags, named in ((["--text-columns", "review"], "--text-columns"), (["--autotune", "5"], "--autotune"), (["--arch", "cnn"], "--arch"),
                         (["--allow-many-labels"], "--allow-many-labels"), (["--on-bad-row", "skip", "--epochs", "3"], "--epochs, --on-bad-row")):
        result = cli_here("train", "--resume", bundle["out"], *flags)
        assert result.returncode == 2, flags
        assert f"so it would ignore {named}; drop them" in result.stderr


def test_labels_that_look_like_another_column_stop_unless_allowed(tmp_path):
    rows = reviews(60, seed=4)
    train = write_reviews(tmp_path / "ids.jsonl", rows)
    by_id = cli_here("train", "--train", train, "--out", tmp_path / "r", "--text-columns", "review", "--label-column", "id", *QUICK)
    assert by_id.returncode == 2
    assert "60 different labels in 60 rows: the labels of column 'id' look like another column (columns: id, review, stars)" in by_id.stderr
    assert by_id.stderr.splitlines()[-1] == ("hint: the file's columns are id, review, stars: name the label column (--text-columns review "
                                             "--label-column stars), or, if these are the labels, --allow-many-labels")
    scores = write_reviews(tmp_path / "scores.csv", [(i, text, 0.5 + i % 3) for i, text, _ in rows])  # 3 labels, but fractions
    fractions = cli_here("train", "--train", scores, "--out", tmp_path / "r", "--text-columns", "review", "--label-column", "stars", *QUICK)
    assert fractions.returncode == 2 and "fractional labels (0.5, 1.5, 2.5, ...)" in fractions.stderr
    allowed = cli_here("train", "--train", scores, "--out", tmp_path / "r", "--text-columns", "review", "--label-column", "stars",
                       "--allow-many-labels", *QUICK)
    assert allowed.returncode == 0, allowed.stderr
    assert not any(p.name != "r" for p in tmp_path.iterdir() if p.is_dir())


def test_hints_name_makes_variables_under_make(tmp_path, monkeypatch, bundle):
    monkeypatch.setenv("MAKELEVEL", "1")
    header = cli_here("train", "--train", bundle["train"], "--out", tmp_path / "r")
    assert header.stderr.splitlines()[1] == 'hint: name the columns: ARGS="--text-columns review --label-column stars"'
    few = write_reviews(tmp_path / "few.csv", reviews(5, seed=3))
    short = cli_here("train", "--train", few, "--out", tmp_path / "r", "--text-columns", "review", "--label-column", "stars", *QUICK)
    assert short.stderr.splitlines()[-1] == "hint: give a dev file: DEV=FILE"
    monkeypatch.delenv("MAKELEVEL")
    real = make("-s", "train", f"PY={sys.executable}", f"TRAIN={bundle['train']}", f"OUT={tmp_path / 'm'}")
    assert real.returncode != 0 and 'hint: name the columns: ARGS="--text-columns review --label-column stars"' in real.stderr


def test_lang_trains_with_that_languages_tokenizer_and_predict_uses_it(tmp_path):
    train = write_csv(tmp_path / "de.csv", [("pos" if i % 2 else "neg", f"Das ist's {'schön und gut' if i % 2 else 'schlecht und öde'} {i}")
                                            for i in range(40)])
    out = tmp_path / "run"
    result = cli_here("train", "--train", train, "--dev", train, "--out", out, "--lang", "de", "--epochs", "1", "--keep-checkpoints", "0", "--quiet")
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "bundle.json").read_text())["tokenizer"]["lang"] == "de"
    assert "ist's" in json.loads((out / "vocab.json").read_text())  # German keeps it whole (English: "ist", "'s")
    shown = json.loads(cli_here("vocab", "show", out, "--data", train, "--json").stdout)
    assert shown["coverage"] == 1.0  # the bundle's own tokenizer, German, reads the file as training did
    wrong = cli_here("train", "--train", train, "--out", tmp_path / "r", "--lang", "qq")
    assert wrong.returncode == 2 and "--lang 'qq'" in wrong.stderr and "hint: xx" in wrong.stderr and not (tmp_path / "r").exists()
