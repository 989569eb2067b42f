"""Load test of ``textpipe serve``: many small requests from concurrent clients, on loopback.

    make bench-serve                   # or: .venv/bin/python bench/serve.py [--model DIR] (about 1 minute)

Starts ``textpipe serve --port 0`` in a child process, warms it up, then sends
``--requests`` POST /predict requests (one review each, from the rotten_tomatoes
test split) from ``--clients`` threads, each over one keep-alive connection, for
``--rounds`` rounds. Writes ``bench/results/serve.json``: every request's answer
status counted, latency percentiles (p50 / p90 / p99 / max, in ms, as the client
sees it), throughput, how the server batched (from ``/healthz``), and the server
process's resident memory (VmRSS) after the warm-up, at its peak, and after each
round: flat memory means the same figure after every round. Exits 1 if any
request went unanswered or failed.

Without ``--model`` it serves ``data/bench/serve-model``, trained once with the
defaults on rotten_tomatoes (about 30 s) and reused after.
"""

from __future__ import annotations

import argparse
import csv
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "serve.json"
DEFAULT_MODEL = ROOT / "data" / "bench" / "serve-model"


def textpipe(*args: str) -> list[str]:
    return [sys.executable, "-m", "textpipe", *args]


def default_model() -> Path:
    if not (DEFAULT_MODEL / "bundle.json").is_file():
        print(f"training {DEFAULT_MODEL} (rotten_tomatoes, default config) ...", file=sys.stderr)
        subprocess.run(textpipe("train", "--dataset", "rotten_tomatoes", "--out", str(DEFAULT_MODEL), "--quiet", "--keep-checkpoints", "0"),
                       cwd=ROOT, check=True)
    return DEFAULT_MODEL


def review_texts() -> list[str]:
    if not (ROOT / "data" / "rotten_tomatoes" / "test.csv").is_file():
        subprocess.run(textpipe("datasets", "fetch", "rotten_tomatoes"), cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    with open(ROOT / "data" / "rotten_tomatoes" / "test.csv", encoding="utf-8", newline="") as f:
        return [row["text"] for row in csv.DictReader(f)]


def start_server(model: Path) -> tuple[subprocess.Popen, int]:
    """The server process and its port, read from the line it prints when listening."""
    process = subprocess.Popen(textpipe("serve", "--model", str(model), "--port", "0", "--quiet"), cwd=ROOT,
                               stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        if line.startswith("serving "):
            port = int(line.split("http://")[1].split("/")[0].rsplit(":", 1)[1])
            threading.Thread(target=process.stderr.read, daemon=True).start()  # drain, so the child never blocks
            return process, port
    raise RuntimeError(f"textpipe serve exited with status {process.wait()} before listening")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def client(port: int, texts: list[str]) -> list[tuple[int, float]]:
    """``(status, seconds)`` of each request, sent one after another over one keep-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    answers = []
    for text in texts:
        start = time.perf_counter()
        try:
            conn.request("POST", "/predict", body=json.dumps({"texts": [text]}), headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            ok = response.status == 200 and len(json.loads(response.read())["predictions"]) == 1
            status = response.status if ok else -response.status
        except (OSError, http.client.HTTPException, ValueError):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            status = 0
        answers.append((status, time.perf_counter() - start))
    conn.close()
    return answers


def burst(port: int, texts: list[str], requests: int, clients: int) -> tuple[list[tuple[int, float]], float]:
    chosen = [texts[i % len(texts)] for i in range(requests)]
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        answers = [a for part in pool.map(lambda c: client(port, chosen[c::clients]), range(clients)) for a in part]
    return answers, time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 10) - 1] if len(values) > 1 else values[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="bundle to serve (default: the rotten_tomatoes default model, trained once)")
    parser.add_argument("--requests", type=int, default=2000, help="requests per round (default: %(default)s)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, to see memory stay flat (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    model, texts = args.model or default_model(), review_texts()
    process, port = start_server(model)
    try:
        burst(port, texts, 200, args.clients)  # warm-up: first-call costs, allocator pools
        rss = {"after_warmup": round(rss_mb(process.pid), 1)}
        peak = [rss["after_warmup"]]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.1):
                peak.append(rss_mb(process.pid))

        threading.Thread(target=sample, daemon=True).start()
        rounds = []
        for r in range(args.rounds):
            answers, wall = burst(port, texts, args.requests, args.clients)
            ms = [seconds * 1000 for _, seconds in answers]
            rounds.append({
                "requests": len(answers), "ok": sum(s == 200 for s, _ in answers), "wall_s": round(wall, 2),
                "requests_per_s": round(len(answers) / wall, 1),
                "latency_ms": {q: round(percentile(ms, p), 2) for q, p in (("p50", 50), ("p90", 90), ("p99", 99))} | {"max": round(max(ms), 2)},
                "rss_mb_after": round(rss_mb(process.pid), 1),
            })
            print(f"round {r + 1}: {rounds[-1]}", file=sys.stderr)
        done.set()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/healthz")
        health = json.loads(conn.getresponse().read())
        conn.close()
    finally:
        process.terminate()
        process.wait()
    rss["peak"] = round(max(peak), 1)
    result = {
        "what": f"{args.rounds} rounds of {args.requests} POST /predict requests (one text each) from {args.clients} keep-alive clients, loopback",
        "model": str(model), "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}",
        "rounds": rounds, "rss_mb": rss,
        "rss_growth_mb": round(rounds[-1]["rss_mb_after"] - rss["after_warmup"], 1),
        "server": {k: health[k] for k in ("requests", "texts", "batches", "largest_batch")},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if all(r["ok"] == r["requests"] == args.requests for r in rounds) else 1


if __name__ == "__main__":
    sys.exit(main())
