"""The golden runs: six trainings whose weights and metrics must never change by accident.

    python tests/golden.py record       # writes this machine's entry of tests/data/golden.json (only on purpose)
    python tests/golden.py check        # trains all six and compares; exit 1 on any difference

The same code gives other float bits on another instruction set (torch's and MKL's kernels pick
theirs by the CPU: AVX2 and AVX512 machines differ in the last bits of the weights from the first
epoch on), so golden.json holds one record per torch CPU capability (:func:`capability`), each
recorded from code whose runs were known good. A machine whose capability has no record skips the
check and says how to record one.

`tests/test_golden.py` runs the same comparison under pytest. Each run goes through the CLI,
as a user runs it; a run is identified by its `weights_sha256` (from `textpipe info --json`) and
its `metrics.json` with the timing fields removed (seconds differ from run to run by nature).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The benchmark datasets (mr, subj, trec6): TEXTPIPE_DATASETS, or the project CI's folder beside the clone.
SHARED = Path(os.environ.get("TEXTPIPE_DATASETS", ROOT.parent / "shared" / "datasets"))
GOLDEN = ROOT / "tests" / "data" / "golden.json"
TIMING_KEYS = ("seconds", "rows_per_second", "train_seconds", "eval_seconds")


def capability() -> str:
    """The instruction set torch's CPU kernels run with here ("AVX2", "AVX512", ...): the key of this machine's record."""
    import torch

    return torch.backends.cpu.get_cpu_capability()


def recorded() -> dict | None:
    """This machine's record (name -> weights sha256 and metrics), or None when its capability has none."""
    return json.loads(GOLDEN.read_text()).get(capability())


def _files(name: str) -> list[str]:
    return ["--train", str(SHARED / name / "train.csv"), "--test", str(SHARED / name / "test.csv")]


RUNS = {
    "default-rotten_tomatoes": ["--dataset", "rotten_tomatoes"],
    "default-mr": _files("mr"),
    "best-mr": _files("mr") + ["--config", str(ROOT / "configs" / "best.toml")],
    "cnn-trec6": _files("trec6") + ["--config", str(ROOT / "configs" / "cnn.toml")],
    "killed-resumed-trec6": _files("trec6"),
    "nproc2-trec6": _files("trec6"),
}


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))


def _textpipe(*args: str) -> list[str]:
    return [sys.executable, "-m", "textpipe", *args]


def _drop_timings(value):
    if isinstance(value, dict):
        return {k: _drop_timings(v) for k, v in value.items() if not any(k.endswith(t) for t in TIMING_KEYS)}
    if isinstance(value, list):
        return [_drop_timings(v) for v in value]
    return value


def _fingerprint(out: Path) -> dict:
    info = subprocess.run(_textpipe("info", str(out), "--json"), capture_output=True, text=True, env=_env(), check=True)
    # Paths differ from clone to clone: name them by their place, not their absolute path
    # (as given, or resolved: the datasets folder may be a link, and a run records resolved paths).
    text = (out / "metrics.json").read_text()
    for path, place in ((SHARED, "<shared>"), (ROOT, "<root>")):
        text = text.replace(str(path.resolve()), place).replace(str(path), place)
    metrics = json.loads(text)
    return {"weights_sha256": json.loads(info.stdout)["weights_sha256"], "metrics": _drop_timings(metrics)}


def _train(args: list[str], out: Path) -> None:
    subprocess.run(_textpipe("train", *args, "--out", str(out), "--overwrite", "--quiet"), env=_env(), check=True, cwd=ROOT)


def _killed_then_resumed(args: list[str], out: Path) -> None:
    """SIGKILL the run once its first timed checkpoint is on disk, then `--resume` it."""
    cmd = _textpipe("train", *args, "--out", str(out), "--overwrite", "--quiet", "--checkpoint-seconds", "1")
    proc = subprocess.Popen(cmd, env=_env(), cwd=ROOT)
    while proc.poll() is None and not list(out.glob(".textpipe-run/checkpoints/step-*.pt")):
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before its first checkpoint: nothing was killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    subprocess.run(_textpipe("train", "--resume", str(out), "--quiet"), env=_env(), check=True, cwd=ROOT)


def _torchrun(args: list[str], out: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "textpipe", "train", *args, "--out", str(out), "--overwrite", "--quiet"]
    subprocess.run(cmd, env=_env(), check=True, cwd=ROOT, capture_output=True)


def run_one(name: str, workdir: Path) -> dict:
    out = workdir / name
    if name.startswith("killed"):
        _killed_then_resumed(RUNS[name], out)
    elif name.startswith("nproc2"):
        _torchrun(RUNS[name], out)
    else:
        _train(RUNS[name], out)
    return _fingerprint(out)


def main() -> int:
    import tempfile

    mode = sys.argv[1] if len(sys.argv) > 1 else "check"
    golden = {} if mode == "record" else recorded()
    if golden is None:
        print(f"no golden record for this CPU's kernels ({capability()}): `python tests/golden.py record` on a commit known good")
        return 1
    found, failed = {}, []
    with tempfile.TemporaryDirectory(prefix="textpipe-golden-") as tmp:
        for name in RUNS:
            start = time.perf_counter()
            found[name] = run_one(name, Path(tmp))
            same = mode == "record" or found[name] == golden[name]
            failed += [] if same else [name]
            print(f"{name:26s} {found[name]['weights_sha256'][:16]}  {time.perf_counter() - start:6.1f} s  {'ok' if same else 'DIFFERENT'}", flush=True)
    if mode == "record":
        records = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
        GOLDEN.write_text(json.dumps({**records, capability(): found}, indent=1, sort_keys=True) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
