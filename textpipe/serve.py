"""``textpipe serve``: a bundle behind HTTP, with a page for people and JSON for programs.

- ``POST /predict`` with ``{"texts": [...], "top_k": k, "explain": false}`` answers
  ``{"predictions": [...]}``, one object per text, as ``textpipe predict`` prints it
  (``"explanation"`` added with ``explain``);
- ``GET /healthz`` answers ``{"status": "ok", ...}`` with the labels and counters;
- ``GET /`` is a page where a person types a text and sees the label probabilities
  as bars and the tokens shaded by their contribution.

Concurrent requests are scored together: each request thread puts its texts on a
queue and waits; one worker thread takes whatever is queued (up to ``max_batch``
texts) and runs the model once for all of it. The model is thus used by one
thread only, and a burst of small requests costs a few large forward passes.

Bodies over ``max_body`` bytes, more than ``max_texts`` texts, texts over
``max_chars`` characters, malformed JSON and missing or mistyped fields get status
400 and ``{"error": "..."}``; nothing a client sends produces a traceback.

Example:
    >>> server = make_server(Predictor.load("runs/default"), ServeConfig(port=0))
    >>> threading.Thread(target=server.serve_forever, daemon=True).start()
    >>> server.server_address  # ('127.0.0.1', 41234): POST http://127.0.0.1:41234/predict
"""

from __future__ import annotations

import json
import queue
import sys
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .explain import add_explanations
from .predict import Predictor, top_labels

PAGE = Path(__file__).with_name("serve_page.html")


@dataclass
class ServeConfig:
    """Where ``textpipe serve`` listens and how much one request may ask.

    Example:
        >>> ServeConfig(port=0, max_texts=16)  # port 0: any free port
    """

    host: str = "127.0.0.1"
    port: int = 8000
    max_body: int = 1 << 20  # bytes of one request body
    max_texts: int = 64  # texts in one request
    max_chars: int = 10_000  # characters in one text
    max_batch: int = 512  # texts the worker scores in one forward pass (a request is never split)
    max_queue: int = 1024  # requests waiting; beyond that the server answers 503
    timeout: float = 30.0  # seconds a request waits for its answer, and a connection for its next byte

    def __post_init__(self) -> None:
        if min(self.max_body, self.max_texts, self.max_chars, self.max_batch, self.max_queue) < 1 or self.timeout <= 0:
            raise ValueError(f"serve limits must be positive: {self}")


class ServeError(OSError):
    """The server cannot start: the port is taken, or the address is not this machine's.

    Example:
        >>> serve("runs/mine", ServeConfig(port=80))   # ServeError: cannot listen on 127.0.0.1:80: Permission denied; ...
    """


class BadRequest(ValueError):
    """The client's fault: answered with status 400 and the message."""


@dataclass
class Job:
    texts: list[str]
    top_k: int | None
    explain: bool
    future: Future


def parse_request(body: bytes, config: ServeConfig) -> tuple[list[str], int | None, bool]:
    """``(texts, top_k, explain)`` from a ``/predict`` body; :class:`BadRequest` says what is wrong."""
    try:
        request = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadRequest(f"the body is not valid JSON: {err}") from None
    if not isinstance(request, dict):
        raise BadRequest('the body must be a JSON object like {"texts": ["some text"]}')
    unknown = set(request) - {"texts", "top_k", "explain"}
    if unknown:
        raise BadRequest(f"unknown field(s) {', '.join(sorted(unknown))}; known: texts, top_k, explain")
    if "texts" not in request:
        raise BadRequest('missing field "texts": a list of strings')
    texts, top_k, explain = request["texts"], request.get("top_k"), request.get("explain", False)
    if not isinstance(texts, list) or not texts:
        raise BadRequest('"texts" must be a non-empty list of strings')
    if len(texts) > config.max_texts:
        raise BadRequest(f'too many texts: {len(texts)}, at most {config.max_texts} per request')
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise BadRequest(f'texts[{i}] must be a non-empty string')
        if len(text) > config.max_chars:
            raise BadRequest(f'texts[{i}] has {len(text)} characters, at most {config.max_chars}')
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise BadRequest('"top_k" must be an integer >= 1')
    if not isinstance(explain, bool):
        raise BadRequest('"explain" must be true or false')
    return texts, top_k, explain


class Batcher:
    """One worker thread that scores every queued request in one forward pass.

    Example:
        >>> batcher = Batcher(Predictor.load("runs/default"))
        >>> batcher.submit(["a gorgeous movie"])[0]["label"]
        'fresh'
    """

    def __init__(self, predictor: Predictor, max_batch: int = 512, max_queue: int = 1024):
        self.predictor, self.max_batch = predictor, max_batch
        self.queue: queue.Queue[Job | None] = queue.Queue(max_queue)
        self.stats = {"requests": 0, "texts": 0, "batches": 0, "largest_batch": 0}  # largest_batch counts requests
        self.worker = threading.Thread(target=self._work, name="textpipe-batcher", daemon=True)
        self.worker.start()

    def submit(self, texts: list[str], top_k: int | None = None, explain: bool = False, timeout: float | None = None) -> list[dict]:
        """Queue the texts and wait for their predictions; ``queue.Full`` when too many requests wait."""
        job = Job(texts, top_k, explain, Future())
        self.queue.put_nowait(job)
        return job.future.result(timeout)

    def close(self) -> None:
        self.queue.put(None)
        self.worker.join()

    def _work(self) -> None:
        while (job := self.queue.get()) is not None:
            jobs = [job]
            size = len(job.texts)
            while size < self.max_batch:
                try:
                    job = self.queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    self.queue.put(None)  # stop after this batch
                    break
                jobs.append(job)
                size += len(job.texts)
            self._score(jobs)

    def _score(self, jobs: list[Job]) -> None:
        try:
            texts = [text for job in jobs for text in job.texts]
            probs = self.predictor.probabilities(texts)
        except Exception as err:  # noqa: BLE001  (the requests get the error, the worker lives on)
            for job in jobs:
                job.future.set_exception(err)
            return
        self.stats["requests"] += len(jobs)
        self.stats["texts"] += len(texts)
        self.stats["batches"] += 1
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(jobs))
        start = 0
        for job in jobs:
            rows = probs[start : start + len(job.texts)]
            start += len(job.texts)
            try:
                results = top_labels(job.texts, rows, self.predictor.labels, job.top_k)
                if job.explain:
                    add_explanations(results, self.predictor.explain(job.texts), self.predictor.labels)
                job.future.set_result(results)
            except Exception as err:  # noqa: BLE001
                job.future.set_exception(err)


class Handler(BaseHTTPRequestHandler):
    """The three routes; every answer is JSON except the page."""

    protocol_version = "HTTP/1.1"  # keep-alive: a client sends many requests over one connection
    # Headers and body leave in two writes; with Nagle's algorithm on, the body waited for the
    # client's delayed ACK of the headers: 40 ms added to every answer (measured: p50 44 ms -> see README).
    disable_nagle_algorithm = True
    server: "TextpipeServer"

    def setup(self) -> None:
        self.timeout = self.server.config.timeout  # a client that stops sending is dropped, not waited for
        super().setup()

    def do_GET(self) -> None:
        path = self.path.partition("?")[0]
        if path == "/":
            self.send(200, PAGE.read_bytes(), "text/html; charset=utf-8")
        elif path == "/healthz":
            self.send_json(200, self.server.health())
        else:
            self.send_json(404, {"error": f"no such page: {self.path}; try GET /, GET /healthz or POST /predict"})

    def do_POST(self) -> None:
        if self.path != "/predict":
            self.send_json(404, {"error": f"no such endpoint: POST {self.path}; try POST /predict"})
            return
        try:
            texts, top_k, explain = parse_request(self.read_body(), self.server.config)
            predictions = self.server.batcher.submit(texts, top_k, explain, timeout=self.server.config.timeout)
        except BadRequest as err:
            self.send_json(400, {"error": str(err)})
        except queue.Full:
            self.send_json(503, {"error": "too many requests waiting; retry shortly"})
        except TimeoutError:
            self.send_json(503, {"error": f"no answer within {self.server.config.timeout:g} s; retry shortly"})
        except Exception as err:  # noqa: BLE001  (one line for the client, never a traceback)
            self.send_json(500, {"error": f"internal error: {type(err).__name__}: {err}"})
        else:
            self.send_json(200, {"predictions": predictions})

    def do_PUT(self) -> None:
        self.send_json(405, {"error": f"{self.command} is not allowed; use GET / , GET /healthz or POST /predict"})

    do_DELETE = do_PATCH = do_PUT

    def read_body(self) -> bytes:
        """The body, refused unread when it is too large or its length is not given."""
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") or length is None or not length.isdigit():
            self.close_connection = True  # the unread body would be taken for the next request
            raise BadRequest("send the body with a Content-Length header")
        if int(length) > self.server.config.max_body:
            self.close_connection = True
            raise BadRequest(f"the body is {int(length)} bytes, at most {self.server.config.max_body}")
        return self.rfile.read(int(length))

    def send_json(self, status: int, obj: dict) -> None:
        self.send(status, json.dumps(obj, ensure_ascii=False).encode("utf-8"), "application/json")

    def send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        if not self.server.quiet:
            sys.stderr.write(f"{self.address_string()} {format % args}\n")


class TextpipeServer(ThreadingHTTPServer):
    """A ``ThreadingHTTPServer`` (one thread per connection) sharing one :class:`Batcher`."""

    daemon_threads = True  # open keep-alive connections do not hold up shutdown

    def __init__(self, predictor: Predictor, config: ServeConfig, quiet: bool = False, model: str = ""):
        self.config, self.quiet, self.model = config, quiet, model
        self.labels = predictor.labels
        self.batcher: Batcher | None = None  # a failed bind calls server_close before there is one
        super().__init__((config.host, config.port), Handler)  # binds first: a taken port leaves no worker thread behind
        self.batcher = Batcher(predictor, config.max_batch, config.max_queue)

    def health(self) -> dict:
        return {"status": "ok", "model": self.model, "labels": self.labels, "limits": {
            "max_texts": self.config.max_texts, "max_chars": self.config.max_chars, "max_body": self.config.max_body,
        }, **self.batcher.stats}

    def server_close(self) -> None:
        super().server_close()
        if self.batcher is not None:
            self.batcher.close()
            self.batcher = None


def make_server(predictor: Predictor, config: ServeConfig | None = None, quiet: bool = False, model: str = "") -> TextpipeServer:
    """A server bound to ``config.host:config.port`` (port 0: a free one), not yet serving."""
    return TextpipeServer(predictor, config or ServeConfig(), quiet, model)


def serve(model_dir: str | Path, config: ServeConfig | None = None, quiet: bool = False) -> None:
    """Load the bundle and answer requests until Ctrl-C."""
    config = config or ServeConfig()
    predictor = Predictor.load(model_dir)
    try:
        server = make_server(predictor, config, quiet, model=str(model_dir))
    except OSError as err:  # the port is taken, or the address is not this machine's
        raise ServeError(f"cannot listen on {config.host}:{config.port}: {err.strerror or err}; choose another --port (0: any free one)") from None
    host, port = server.server_address[:2]
    print(f"serving {model_dir} on http://{host}:{port}/  (POST /predict, GET /healthz; Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
