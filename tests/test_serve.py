"""``textpipe serve`` over real HTTP on 127.0.0.1: answers, errors, batching, a load burst, and the page in Chromium."""

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from browser import Chromium, find_chromium, label_on_page
from conftest import TEXTS, run_cli as textpipe, train_tiny
from textpipe.predict import Predictor
from textpipe.serve import Batcher, ServeConfig, make_server

LIMITS = ServeConfig(port=0, max_texts=8, max_body=3000, max_chars=500, timeout=20)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    model_dir, _ = train_tiny(tmp_path_factory.mktemp("serve"))
    server = make_server(Predictor.load(model_dir), LIMITS, quiet=True, model="tiny")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {"model": model_dir, "port": server.server_address[1], "server": server}
    server.shutdown()
    server.server_close()
    thread.join()


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None, conn=None):
    """``(status, parsed JSON or text)`` of one request."""
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        kind = response.getheader("Content-Type", "")
        return response.status, json.loads(data) if kind.startswith("application/json") else data.decode()
    finally:
        if own:
            conn.close()


def post(port: int, obj, conn=None):
    return request(port, "POST", "/predict", json.dumps(obj).encode(), {"Content-Type": "application/json"}, conn)


def test_predictions_are_the_clis(served):
    status, answer = post(served["port"], {"texts": TEXTS, "top_k": 1})
    assert status == 200
    cli = textpipe("predict", "--model", served["model"], "--top-k", "1", *TEXTS)
    assert cli.returncode == 0, cli.stderr
    expected = [json.loads(line) for line in cli.stdout.splitlines()]
    assert [p["text"] for p in answer["predictions"]] == TEXTS
    assert [p["label"] for p in answer["predictions"]] == [e["label"] for e in expected]
    for got, want in zip(answer["predictions"], expected):
        assert got["probs"].keys() == want["probs"].keys()
        assert got["probs"] == pytest.approx(want["probs"], abs=2e-6)


def test_explanations_are_the_clis(served):
    status, answer = post(served["port"], {"texts": TEXTS[:2], "explain": True})
    cli = textpipe("predict", "--model", served["model"], "--explain", *TEXTS[:2])
    expected = [json.loads(line) for line in cli.stdout.splitlines()]
    assert status == 200 and cli.returncode == 0
    for got, want in zip(answer["predictions"], expected):
        assert got["explanation"]["method"] == want["explanation"]["method"] == "exact"
        assert [t for t, _ in got["explanation"]["tokens"]] == [t for t, _ in want["explanation"]["tokens"]]
        assert [f["feature"] for f in got["explanation"]["top"]] == [f["feature"] for f in want["explanation"]["top"]]


def test_healthz_and_page(served):
    status, health = request(served["port"], "GET", "/healthz")
    assert status == 200 and health["status"] == "ok" and health["labels"] == ["neg", "pos"] and health["limits"]["max_texts"] == 8
    status, page = request(served["port"], "GET", "/")
    assert status == 200 and "<title>textpipe</title>" in page and 'id="submit"' in page


@pytest.mark.parametrize("body, message", [
    (b'{"texts": ["a", ', "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b'["a text"]', "must be a JSON object"),
    (b'{"text": ["a text"]}', "unknown field(s) text"),
    (b'{"top_k": 1}', 'missing field "texts"'),
    (b'{"texts": "a text"}', "non-empty list of strings"),
    (b'{"texts": []}', "non-empty list of strings"),
    (b'{"texts": ["ok", 3]}', "texts[1] must be a non-empty string"),
    (b'{"texts": ["   "]}', "texts[0] must be a non-empty string"),
    (json.dumps({"texts": ["x"] * 9}).encode(), "too many texts: 9, at most 8"),
    (json.dumps({"texts": ["y" * 501]}).encode(), "texts[0] has 501 characters, at most 500"),
    (b'{"texts": ["a"], "top_k": 0}', '"top_k" must be an integer >= 1'),
    (b'{"texts": ["a"], "top_k": true}', '"top_k" must be an integer >= 1'),
    (b'{"texts": ["a"], "explain": "yes"}', '"explain" must be true or false'),
])
def test_bad_requests_get_400_and_a_json_message(served, body, message):
    status, answer = request(served["port"], "POST", "/predict", body)
    assert status == 400 and message in answer["error"]


def test_oversized_body_is_refused_unread(served):
    conn = http.client.HTTPConnection("127.0.0.1", served["port"], timeout=20)
    conn.putrequest("POST", "/predict")
    conn.putheader("Content-Length", str(10 * 3000))
    conn.endheaders()  # the body is never sent: the server must answer from the header alone
    response = conn.getresponse()
    assert response.status == 400 and "at most 3000" in json.loads(response.read())["error"]
    assert response.getheader("Connection") == "close"
    conn.close()
    big = json.dumps({"texts": ["word " * 90] * 8}).encode()  # under every other limit, over max_body
    status, answer = request(served["port"], "POST", "/predict", big)
    assert status == 400 and "at most 3000" in answer["error"]


def test_other_paths_and_methods(served):
    assert request(served["port"], "GET", "/nope")[0] == 404
    assert request(served["port"], "POST", "/nope", b"{}")[0] == 404
    status, answer = request(served["port"], "DELETE", "/predict")
    assert status == 405 and "error" in answer


def test_a_burst_from_8_clients_is_answered_in_full(served):
    texts = [TEXTS[i % len(TEXTS)] for i in range(200)]
    expected = {t: r["label"] for t, r in zip(TEXTS, Predictor.load(served["model"]).predict(TEXTS))}

    def client(worker: int) -> list[tuple[int, str, str]]:
        conn = http.client.HTTPConnection("127.0.0.1", served["port"], timeout=20)  # keep-alive: one connection each
        answers = []
        for text in texts[worker::8]:
            status, answer = post(served["port"], {"texts": [text]}, conn)
            answers.append((status, text, answer["predictions"][0]["label"] if status == 200 else answer))
        conn.close()
        return answers

    with ThreadPoolExecutor(8) as pool:
        answers = [a for chunk in pool.map(client, range(8)) for a in chunk]
    assert len(answers) == 200 and all(status == 200 for status, _, _ in answers)
    assert all(label == expected[text] for _, text, label in answers)


class SlowPredictor:
    """A predictor whose first forward pass waits, so requests pile up behind it."""

    def __init__(self, predictor: Predictor):
        self.inner, self.labels, self.release, self.calls = predictor, predictor.labels, threading.Event(), []

    def probabilities(self, texts):
        self.calls.append(len(texts))
        self.release.wait(20)
        return self.inner.probabilities(texts)

    def explain(self, texts):
        return self.inner.explain(texts)


def test_queued_requests_are_scored_in_one_forward_pass(served):
    slow = SlowPredictor(Predictor.load(served["model"]))
    batcher = Batcher(slow, max_batch=100)
    with ThreadPoolExecutor(5) as pool:
        first = pool.submit(batcher.submit, ["great"])
        while not slow.calls:  # the worker is now busy with the first request
            threading.Event().wait(0.01)
        rest = [pool.submit(batcher.submit, [text, text], 1) for text in TEXTS[:4]]
        while batcher.queue.qsize() < 4:
            threading.Event().wait(0.01)
        slow.release.set()
        results = [first.result(20)] + [f.result(20) for f in rest]
    batcher.close()
    assert slow.calls == [1, 8]  # the four waiting requests (two texts each) in one pass
    assert batcher.stats == {"requests": 5, "texts": 9, "batches": 2, "largest_batch": 4}
    assert [len(r) for r in results] == [1, 2, 2, 2, 2] and all(len(r[0]["probs"]) == 1 for r in results[1:])
    torch.testing.assert_close(torch.tensor([r[0]["probs"][r[0]["label"]] for r in results[1:]]),
                               torch.tensor([p["probs"][p["label"]] for p in slow.inner.predict(TEXTS[:4])]))


def test_the_page_in_headless_chromium(served):
    binary = find_chromium()
    if binary is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it where it can)")
    text = "a gorgeous and witty film, the plot was dull"
    with Chromium(binary) as page:
        shown = label_on_page(page, f"http://127.0.0.1:{served['port']}/", text)
    expected = Predictor.load(served["model"]).predict([text])[0]
    assert shown["label"] == expected["label"]
    assert [name for name, _ in shown["bars"]] == list(expected["probs"])
    assert [token for token, _, _ in shown["tokens"]] == ["a", "gorgeous", "and", "witty", "film", ",", "the", "plot", "was", "dull"]
    colours = {token: colour for token, _, colour in shown["tokens"]}
    assert all(colour.startswith("rgba(") for colour in colours.values())
    label_is_pos = expected["label"] == "pos"
    assert colours["gorgeous"].startswith("rgba(34, 160, 80" if label_is_pos else "rgba(215, 50, 50")  # green: toward the label
    assert colours["dull"].startswith("rgba(215, 50, 50" if label_is_pos else "rgba(34, 160, 80")


def test_the_command_serves_and_a_taken_port_is_one_clear_error(served):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "textpipe", "serve", "--model", str(served["model"]), "--quiet"]
    process = subprocess.Popen([*command, "--port", "0"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = next(line for line in process.stderr if line.startswith("serving "))
        port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        status, health = request(port, "GET", "/healthz")
        assert status == 200 and health["model"] == str(served["model"])
    finally:
        process.terminate()
        process.wait(20)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = subprocess.run([*command, "--port", str(taken.getsockname()[1])], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2 and "cannot listen on 127.0.0.1:" in result.stderr and "Traceback" not in result.stderr
