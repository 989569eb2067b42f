"""--on-bad-row skip end to end: every skipped row is counted, in metrics.json and on stderr, whatever the workers."""

import json
import subprocess
import sys

import pytest

from conftest import cli_here, crash_after_step, make_rows, tiny, write_csv
from textpipe.run.config import DataConfig, PipelineConfig
from textpipe.run.pipeline import report_file
from textpipe.run.phases import train_files
from textpipe.text.sources import SourceConfig

BAD_ROWS = [b"pos\n", b"neg,   \n", b",no label\n", b"pos,caf\xe9\n", b"neg,nul\x00\n"]
REASONS = {"wrong number of columns": 1, "empty text": 1, "missing label": 1, "undecodable bytes": 1, "NUL byte": 1}


def with_bad_rows(path, good_rows, extra=b""):
    """A CSV of ``good_rows`` with the five BAD_ROWS spread among them (and ``extra`` rows at the end)."""
    write_csv(path, good_rows)
    lines = path.read_bytes().splitlines(keepends=True)
    for i, bad in enumerate(BAD_ROWS):
        lines.insert(1 + (i + 1) * len(good_rows) // (len(BAD_ROWS) + 1), bad)
    path.write_bytes(b"".join(lines) + extra)
    return path


@pytest.fixture
def bad_files(tmp_path):
    train = with_bad_rows(tmp_path / "train.csv", make_rows(300, seed=1))
    dev = with_bad_rows(tmp_path / "dev.csv", make_rows(60, seed=2))
    test = with_bad_rows(tmp_path / "test.csv", make_rows(80, seed=3), extra=b"meh,a label training never had\n")
    return train, dev, test


def skip_config(num_workers=0):
    return tiny(train={"epochs": 1, "seed": 3}, data={"num_workers": num_workers, "source": {"on_bad_row": "skip"}})


@pytest.mark.parametrize("num_workers", [0, 2])
def test_skipped_rows_are_counted_with_any_number_of_workers(bad_files, tmp_path, num_workers):
    train, dev, test = bad_files
    metrics = train_files(train, test, tmp_path / "run", dev=dev, config=skip_config(num_workers), quiet=True)
    assert metrics["skipped"] == {"train": REASONS, "dev": REASONS, "test": {**REASONS, "label not seen in training": 1}}
    # Rows evaluated + rows skipped = rows in the file.
    assert metrics["test"]["n"] == 80 and metrics["dev"]["n"] == 60
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["skipped"] == metrics["skipped"]


def test_held_out_dev_rows_are_counted_with_the_training_file(bad_files, tmp_path):
    train, _, test = bad_files
    metrics = train_files(train, test, tmp_path / "run", config=skip_config(num_workers=2), quiet=True)
    assert metrics["skipped"]["train"] == REASONS and "dev" not in metrics["skipped"]
    assert 15 <= metrics["dev"]["n"] <= 50  # about one in 10 of the 300 good rows


def test_report_file_counts_skipped_rows(bad_files, tmp_path):
    train, dev, test = bad_files
    train_files(train, test, tmp_path / "run", dev=dev, config=skip_config(), quiet=True)
    summary = report_file(tmp_path / "run", test, tmp_path / "eval", source=SourceConfig(on_bad_row="skip"))
    assert summary["overall"]["n"] == 80 and summary["skipped"] == {**REASONS, "label not seen in training": 1}


def textpipe_cli(*args):
    return subprocess.run([sys.executable, "-m", "textpipe", *map(str, args)], capture_output=True, text=True)


def test_cli_skip_reports_counts_and_default_stops(bad_files, tmp_path):
    train, dev, test = bad_files
    out = tmp_path / "run"
    common = ["--train", train, "--dev", dev, "--test", test, "--out", out, "--epochs", "1", "--tokenizer", "whitespace", "--quiet"]
    result = cli_here("train", *common)
    assert result.returncode == 2
    assert result.stderr.strip() == f"textpipe train: error: {train}:52: expected 2 columns, found 1"

    result = cli_here("train", *common, "--on-bad-row", "skip", "--overwrite")  # the folder holds the failed run
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "skipped 5 train rows: NUL byte 1, empty text 1, missing label 1, undecodable bytes 1, wrong number of columns 1"
    assert lines[2] == "skipped 6 test rows: NUL byte 1, empty text 1, label not seen in training 1, missing label 1, undecodable bytes 1, wrong number of columns 1"
    assert json.loads((out / "metrics.json").read_text())["skipped"]["test"]["label not seen in training"] == 1

    result = cli_here("evaluate", "--model", out, "--data", test)
    assert result.returncode == 2 and result.stderr.startswith(f"textpipe evaluate: error: {test}:")
    result = cli_here("evaluate", "--model", out, "--data", test, "--on-bad-row", "skip")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["skipped"]["label not seen in training"] == 1
    assert result.stderr.startswith("skipped 6 evaluated rows: ")


def test_cli_source_options_for_a_headerless_file(tmp_path):
    rows = make_rows(200, seed=4)
    headerless = tmp_path / "news.csv"
    headerless.write_text("".join(f'{label},"{text.split()[0]}","{text}"\n' for label, text in rows), encoding="utf-8")
    out = tmp_path / "run"
    args = ["--train", headerless, "--test", headerless, "--out", out, "--epochs", "1", "--tokenizer", "whitespace", "--quiet"]
    result = textpipe_cli("train", *args, "--no-header", "--label-column", "0", "--text-columns", "1,2")
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "metrics.json").read_text())["test"]["n"] == 200
    result = textpipe_cli("train", *args, "--no-header")
    assert result.returncode == 2 and "without a header, text_columns and label_column are column indices" in result.stderr


def test_source_section_round_trips_through_the_config_dict():
    config = PipelineConfig(data=DataConfig(source=SourceConfig(text_columns=[1, 2], label_column=0, header=False, on_bad_row="skip")))
    again = PipelineConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again.data.source == config.data.source and isinstance(again.data.source, SourceConfig)
    with pytest.raises(ValueError, match="unknown keys in \\[data.source\\]: header_row"):
        PipelineConfig.from_dict({"data": {"source": {"header_row": False}}})


def test_a_resumed_run_still_reports_the_training_files_skipped_rows(bad_files, tmp_path):
    from textpipe.run.phases import resume_run

    train, dev, test = bad_files
    first = train_files(train, test, tmp_path / "first", dev=dev, config=skip_config(), quiet=True)
    config = skip_config()
    config.train.checkpoint_every = 1
    with crash_after_step(1, KeyboardInterrupt(), after_checkpoint=1), pytest.raises(KeyboardInterrupt):  # a crash after the first step's checkpoint
        train_files(train, test, tmp_path / "run", dev=dev, config=config, quiet=True)
    again = resume_run(tmp_path / "run", quiet=True)
    assert again["skipped"] == first["skipped"] and first["skipped"]["train"] == REASONS
