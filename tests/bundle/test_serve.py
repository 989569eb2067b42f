"""``textpipe serve`` over real HTTP on 127.0.0.1: answers, errors, batching, a load burst, and the page in Chromium."""

import http.client
import json
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from browser import Chromium, find_chromium, label_on_page
from conftest import TEXTS, run_cli as textpipe, train_tiny
from textpipe.bundle.explain import add_explanations
from textpipe.bundle.predict import Predictor
from textpipe.bundle.serve import BadRequest, Batcher, ServeConfig, make_server, parse_request

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
    # what the model cannot take is refused before it is queued (these answered 500, or 200 with a 2,000-digit top_k)
    (b'{"texts": ["fine", "a \\ud800 b"]}', "texts[1] is not valid Unicode: a lone surrogate \\ud800 at character 2"),
    (b'{"texts": ["\\udfff"]}', "texts[0] is not valid Unicode"),
    (b'{"texts": ["\xed\xa0\x80"]}', "texts[0] is not valid Unicode"),  # a surrogate in UTF-8 bytes: json reads it
    (b'{"texts": ["a"], "top_k": ' + b"9" * 2000 + b"}", "an integer of 2,000 digits, at most 18"),
    (b'{"texts": ["a"], "top_k": -' + b"9" * 30 + b"}", "an integer of 30 digits"),
    (b"[" * 1400 + b"]" * 1400, "nested too deep"),
    (b'{"texts": ' + b'[' * 1400 + b']' * 1400 + b'}', "nested too deep"),
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

    def results(self, texts, probs, top_k=None):
        return self.inner.results(texts, probs, top_k)


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


@pytest.mark.parametrize("length", ["9" * 5000, "1" + "0" * 19, "\u00b3", "-1", "1e3"])
def test_a_content_length_that_is_no_small_integer_gets_400(served, length):
    with socket.create_connection(("127.0.0.1", served["port"]), timeout=20) as raw:
        raw.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: " + length.encode("latin-1") + b"\r\n\r\n")
        answer = raw.makefile("rb").read()  # the server answers and closes: the body is left unread
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"Connection: close" in head
    assert "Content-Length" in json.loads(body)["error"] or "over 3000 bytes" in json.loads(body)["error"]


def test_one_failing_text_never_fails_the_requests_scored_with_it(served):
    """A text the model cannot take (a lone surrogate sent past parse_request) fails its own request; the pass it
    shared is scored again request by request."""
    slow = SlowPredictor(Predictor.load(served["model"]))
    batcher = Batcher(slow, max_batch=100)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(batcher.submit, ["great"])
        wait_until(lambda: slow.calls)
        good = pool.submit(batcher.submit, TEXTS[:2])
        bad = pool.submit(batcher.submit, ["fine", "a \ud800 b"])
        also_good = pool.submit(batcher.submit, TEXTS[2:4], 1)
        wait_until(lambda: batcher.queue.qsize() == 3)
        slow.release.set()
        first.result(20)
        assert [p["label"] for p in good.result(20)] == [p["label"] for p in slow.inner.predict(TEXTS[:2])]
        assert [p["label"] for p in also_good.result(20)] == [p["label"] for p in slow.inner.predict(TEXTS[2:4])]
        with pytest.raises(UnicodeEncodeError):
            bad.result(20)
    batcher.close()
    assert slow.calls[:2] == [1, 6] and sorted(slow.calls[2:]) == [2, 2, 2]  # the shared pass, then each request alone


def test_200_clients_making_2000_requests_are_all_answered(served):
    """200 clients connect at once, before the server accepts any: the listen backlog holds them all
    (at http.server's 5, the kernel dropped the others' SYNs, retried a second or more later), then 10 requests each."""
    server = make_server(Predictor.load(served["model"]), LIMITS, quiet=True)
    port, thread = server.server_address[1], threading.Thread(target=server.serve_forever, daemon=True)
    sockets = [socket.socket() for _ in range(200)]
    try:
        poller = select.poll()
        for sock in sockets:
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            poller.register(sock, select.POLLOUT)
        connected, deadline = 0, time.monotonic() + 0.8
        while connected < len(sockets) and time.monotonic() < deadline:
            for fd, _ in poller.poll(50):
                poller.unregister(fd)
                connected += 1
        assert connected == 200, f"{connected} of 200 connections taken by the kernel within 0.8 s"
        thread.start()

        def client(sock: socket.socket) -> list[int]:
            sock.setblocking(True)
            sock.settimeout(20)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
            conn.sock = sock
            return [post(port, {"texts": [TEXTS[i % len(TEXTS)]]}, conn)[0] for i in range(10)]

        start = time.monotonic()
        with ThreadPoolExecutor(200) as pool:
            statuses = [status for part in pool.map(client, sockets) for status in part]
        assert len(statuses) == 2000 and set(statuses) == {200} and time.monotonic() - start < 60
    finally:
        for sock in sockets:
            sock.close()
        if thread.is_alive():
            server.shutdown()
        server.server_close()


def test_work_per_request_is_bounded_long_words_and_explain_counted_higher(served):
    port = served["port"]  # max_work 100,000 units: a character each, and n*s/10 for a word of n characters, s of them symbols
    status, answer = post(port, {"texts": ["(" * 500] * 5})  # 5 x (500 + 25,000): spaCy takes seconds on each
    assert status == 413 and "too much work: 127,500 units, at most 100,000 per request" in answer["error"]
    assert post(port, {"texts": ["(" * 400]})[0] == 200  # 16,400
    assert post(port, {"texts": ["a" * 500] * 5})[0] == 200  # letters: 2,500, however long the word
    status, answer = post(port, {"texts": ["(" * 450], "explain": True})  # 20,700 x 5
    assert status == 413 and "too much work: 103,500 units" in answer["error"]
    config = ServeConfig(max_work=1000)
    assert parse_request(json.dumps({"texts": ["word " * 90]}).encode(), config)[0] == ["word " * 90]  # 450
    with pytest.raises(BadRequest, match="too much work: at least 2,250 units") as refused:  # not gone through word by word
        parse_request(json.dumps({"texts": ["word " * 90], "explain": True}).encode(), config)
    assert refused.value.status == 413


def wait_until(condition, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "waited too long"
        time.sleep(0.01)


def test_a_client_that_left_has_its_queued_work_dropped(served, tmp_path):
    slow = SlowPredictor(Predictor.load(served["model"]))
    server = make_server(slow, LIMITS, quiet=True)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(post, port, {"texts": ["great"]})
            wait_until(lambda: slow.calls)  # the worker is busy: what comes next waits in the queue
            with socket.create_connection(("127.0.0.1", port), timeout=20) as leaving:
                body = json.dumps({"texts": ["one", "two", "three"]}).encode()
                leaving.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                wait_until(lambda: server.batcher.queue.qsize() == 1)
            wait_until(lambda: server.batcher.dropped == 1)  # noticed within a POLL
            second = pool.submit(post, port, {"texts": ["dull", "boring"]})
            wait_until(lambda: server.batcher.queue.qsize() == 2)
            slow.release.set()
            assert first.result(20)[0] == 200 and second.result(20)[0] == 200
        assert slow.calls == [1, 2]  # the three texts of the client that left were never scored
        assert request(port, "GET", "/healthz")[1]["dropped"] == 1
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class SlowExplainer(SlowPredictor):
    """Explaining takes 0.3 s a text."""

    def __init__(self, predictor: Predictor):
        super().__init__(predictor)
        self.release.set()
        self.explaining = threading.Event()

    def explain(self, texts):
        self.explaining.set()
        time.sleep(0.3 * len(texts))
        return self.inner.explain(texts)


def test_nobody_waits_long_behind_another_clients_explanations(served):
    slow = SlowExplainer(Predictor.load(served["model"]))
    batcher = Batcher(slow)
    long_texts = [f"{text} number {i}" for i, text in enumerate(TEXTS * 2)]  # 10 texts: 3 s of explaining
    with ThreadPoolExecutor(3) as pool:
        long = pool.submit(batcher.submit, long_texts, None, True)
        assert slow.explaining.wait(20)
        start = time.monotonic()
        plain = pool.submit(batcher.submit, ["great"])
        short = pool.submit(batcher.submit, ["dull"], None, True)
        plain.result(20)
        plain_wait = time.monotonic() - start
        short.result(20)
        short_wait = time.monotonic() - start
        explained = long.result(20)
    batcher.close()
    assert plain_wait < 1.5 and short_wait < 2.0, (plain_wait, short_wait)  # a turn or two (0.3 s each), not ten (3 s)
    expected = add_explanations(slow.inner.predict(long_texts), slow.inner.explain(long_texts), slow.inner.labels)  # in one go
    assert [e["text"] for e in explained] == long_texts and [e["label"] for e in explained] == [e["label"] for e in expected]
    for got, want in zip(explained, expected):
        assert [t for t, _ in got["explanation"]["tokens"]] == [t for t, _ in want["explanation"]["tokens"]]
        assert [w for _, w in got["explanation"]["tokens"]] == pytest.approx([w for _, w in want["explanation"]["tokens"]], abs=1e-5)


def test_the_memo_is_bounded_in_bytes(served, monkeypatch):
    """Unique long words, one request after another: the encoder's memo, the tokenizer's and spaCy's vocabulary
    start over together once they hold MEMO_BYTES (estimated), where they grew by some 8 bytes a character before."""
    monkeypatch.setattr("textpipe.text.encoder.MEMO_BYTES", 400_000)
    predictor = Predictor.load(served["model"])
    expected = predictor.probabilities(["great film"])
    for i in range(60):  # 60 x 4 words of 1,000 letters: some 2 MB remembered without the bound
        predictor.probabilities([f"{i:04d}{chr(97 + j)}" + "x" * 995 for j in range(4)])
        tokenizer = predictor.bundle.tokenizer  # its chunk -> tokens memo, and spaCy's strings (some 5,000 characters new)
        assert predictor.encoder.bytes <= 400_000 and sum(map(len, predictor.encoder.codes)) <= 400_000 // 8
        assert sum(map(len, getattr(tokenizer._fn, "memo", {}))) <= 400_000 // 8
        assert tokenizer._nlp is None or sum(map(len, tokenizer._nlp.vocab.strings)) <= 5_000 + 2 * 400_000 // 8
    torch.testing.assert_close(predictor.probabilities(["great film"]), expected)  # the same ids after starting over


def test_other_methods_get_405_naming_those_allowed_in_json(served):
    port = served["port"]
    for method, path, allowed in [("GET", "/predict", "POST"), ("PUT", "/predict", "POST"), ("OPTIONS", "/predict", "POST"),
                                  ("FOO", "/predict", "POST"), ("POST", "/healthz", "GET, HEAD"), ("PATCH", "/", "GET, HEAD"),
                                  ("BREW", "/nope", "GET, HEAD, POST")]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        conn.request(method, path)
        response = conn.getresponse()
        answer = json.loads(response.read())
        conn.close()
        assert response.status == 405 and response.getheader("Allow") == allowed, (method, path)
        assert response.getheader("Content-Type") == "application/json" and f"{method} is not allowed on {path}" in answer["error"]
        assert ("use POST /predict" in answer["error"]) == (path == "/predict")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)  # HEAD: the GET answer's headers, no body
    conn.request("HEAD", "/healthz")
    response = conn.getresponse()
    assert response.status == 200 and response.read() == b"" and int(response.getheader("Content-Length")) > 0
    conn.request("GET", "/healthz")  # the same connection: nothing left over from the HEAD answer
    assert conn.getresponse().status == 200
    conn.close()
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:  # http.server's own refusals: JSON too
        raw.sendall(b"GET / HTTP/9.9\r\n\r\n")
        head, _, body = raw.makefile("rb").read().partition(b"\r\n\r\n")
    assert b" 505 " in head.split(b"\r\n")[0] and b"application/json" in head and "error" in json.loads(body)


def test_a_reset_connection_is_one_line_in_the_log(served, capfd, caplog):
    """On the textpipe logger (the CLI shows it on stderr), one line per reset, no traceback anywhere."""
    server = served["server"]
    server.quiet = False
    try:
        for partial in (b"POST /predict HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"te", b"GET /healthz HTTP/1.1\r\n"):
            raw = socket.create_connection(("127.0.0.1", served["port"]), timeout=20)
            raw.sendall(partial)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            time.sleep(0.2)  # the server is reading the rest
            raw.close()  # linger 0: a reset, not a close
        err = ""
        deadline = time.monotonic() + 10
        while sum(" connection lost: " in m for m in caplog.messages) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        err += capfd.readouterr().err
    finally:
        server.quiet = True
    lost = [m for m in caplog.messages if " connection lost: " in m]
    assert "Traceback" not in err + caplog.text and len(lost) == 2 and all("ConnectionResetError: " in line for line in lost), caplog.text
