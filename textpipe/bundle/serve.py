"""``textpipe serve``: a bundle behind HTTP, with a page for people and JSON for programs.

- ``POST /predict`` with ``{"texts": [...], "top_k": k, "explain": false}`` answers
  ``{"predictions": [...]}``, one object per text, as ``textpipe predict`` prints it
  (``"explanation"`` added with ``explain``; a multi-label bundle answers ``{"text", "labels", "probs"}``
  each, and ``"explanations"``, one per label of the set);
- ``GET /healthz`` answers ``{"status": "ok", ...}`` with the labels, limits and counters;
- ``GET /`` is a page where a person types a text and sees the label probabilities
  as bars and the tokens shaded by their contribution.

One thread per connection reads the request (:func:`~textpipe.bundle.serve_work.parse_request`)
and waits for the one worker thread of :class:`~textpipe.bundle.serve_work.Batcher` to score it
with the others queued; while it waits it watches the connection, and a client that
leaves has its request dropped from the work. What a client sends is bounded and
refused with ``{"error": "..."}``: status 400 for a body over ``max_body`` bytes or what
``parse_request`` refuses, 413 for more than ``max_work`` units of work, 405 (with an
``Allow`` header) for a method a path does not take, 503 when too many requests wait or
the answer takes over ``timeout`` seconds. Nothing a client sends produces a traceback:
a lost connection is one line on stderr.

Example:
    >>> server = make_server(Predictor.load("runs/default"), ServeConfig(port=0))
    >>> threading.Thread(target=server.serve_forever, daemon=True).start()
    >>> server.server_address  # ('127.0.0.1', 41234): POST http://127.0.0.1:41234/predict
"""

from __future__ import annotations

import json
import queue
import select
import logging
import socket
import sys
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .predict import Predictor
from .serve_work import MAX_DIGITS, BadRequest, Batcher, Job, ServeConfig, parse_request, work_of  # noqa: F401  (textpipe.bundle.serve's names)

PAGE = Path(__file__).with_name("serve_page.html")
ROUTES = {"/": "GET, HEAD", "/healthz": "GET, HEAD", "/predict": "POST"}  # path -> its methods (the Allow header)
POLL = 0.25  # seconds between two looks at whether a waiting client is still connected

log = logging.getLogger("textpipe")  # the CLI shows it on stderr


class ServeError(OSError):
    """The server cannot start: the port is taken, or the address is not this machine's.

    Example:
        >>> serve("runs/mine", ServeConfig(port=80))   # ServeError: cannot listen on 127.0.0.1:80: Permission denied; ...
    """


class ClientGone(ConnectionError):
    """The client closed its connection, or stopped sending, before its answer: nobody to answer."""


class Handler(BaseHTTPRequestHandler):
    """The three routes; every answer is JSON except the page."""

    protocol_version = "HTTP/1.1"  # keep-alive: a client sends many requests over one connection
    # Headers and body leave in two writes; with Nagle's algorithm on, the body would wait for the
    # client's delayed ACK of the headers, on every answer.
    disable_nagle_algorithm = True
    server: "TextpipeServer"

    def setup(self) -> None:
        self.timeout = self.server.config.timeout  # a client that stops sending is dropped, not waited for
        super().setup()

    def __getattr__(self, name: str):
        # http.server answers a method it finds no do_<METHOD> for with 501 and an HTML page: here, 405 and JSON.
        if name.startswith("do_"):
            return self.refuse_method
        raise AttributeError(name)

    def route(self) -> str:
        return self.path.partition("?")[0]

    def do_GET(self) -> None:
        path = self.route()
        self.leave_body_unread()
        if path == "/":
            self.send(200, PAGE.read_bytes(), "text/html; charset=utf-8")
        elif path == "/healthz":
            self.send_json(200, self.server.health())
        elif path in ROUTES:
            self.refuse_method()
        else:
            self.send_json(404, {"error": f"no such page: {self.path}; try GET /, GET /healthz or POST /predict"})

    do_HEAD = do_GET  # the same status and headers, no body (see send)

    def do_POST(self) -> None:
        path = self.route()
        if path != "/predict":
            if path in ROUTES:
                self.refuse_method()
            else:
                self.leave_body_unread()
                self.send_json(404, {"error": f"no such endpoint: POST {self.path}; try POST /predict"})
            return
        try:
            texts, top_k, explain = parse_request(self.read_body(), self.server.config)
            predictions = self.wait_for(self.server.batcher.put(texts, top_k, explain))
        except BadRequest as err:
            self.send_json(err.status, {"error": str(err)})
        except queue.Full:
            self.send_json(503, {"error": "too many requests waiting; retry shortly"})
        except TimeoutError:
            self.send_json(503, {"error": f"no answer within {self.server.config.timeout:g} s; retry shortly"})
        except UnicodeError as err:  # parse_request lets no such text through; should the model still meet one
            self.send_json(400, {"error": f"a text cannot be encoded: {err}"})
        except ConnectionError:
            raise  # nobody to answer: one line in the log (TextpipeServer.handle_error)
        except Exception as err:  # noqa: BLE001  (one line for the client, never a traceback)
            self.send_json(500, {"error": f"internal error: {type(err).__name__}: {err}"})
        else:
            self.send_json(200, {"predictions": predictions})

    def refuse_method(self) -> None:
        """405 naming the methods the path takes (an ``Allow`` header too)."""
        path = self.route()
        how = 'POST /predict with a JSON body like {"texts": ["some text"]}' if path == "/predict" else "GET /, GET /healthz or POST /predict"
        self.leave_body_unread()
        self.send_json(405, {"error": f"{self.command} is not allowed on {path}; use {how}"}, {"Allow": ROUTES.get(path, "GET, HEAD, POST")})

    def leave_body_unread(self) -> None:
        """The connection closes after the answer if the request has a body: unread, it would be taken for the next request."""
        if self.headers.get("Transfer-Encoding") or self.headers.get("Content-Length", "0").strip() != "0":
            self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # http.server's own refusals (a malformed request line, headers too long, ...): JSON too, with a status
        # line and headers even where the request line was too broken to say its version (taken as HTTP/0.9).
        self.close_connection = True
        self.request_version = "HTTP/1.0" if self.request_version == "HTTP/0.9" else self.request_version
        self.send_json(code, {"error": message or HTTPStatus(code).phrase})

    def read_body(self) -> bytes:
        """The body, refused unread when it is too large or its length is not given."""
        length, limit = self.headers.get("Content-Length", ""), self.server.config.max_body
        if self.headers.get("Transfer-Encoding") or not (length.isascii() and length.isdigit()):
            self.close_connection = True  # the unread body would be taken for the next request
            raise BadRequest("send the body with a Content-Length header")
        if len(length) > MAX_DIGITS or int(length) > limit:
            self.close_connection = True
            raise BadRequest(f"the body is {int(length):,} bytes, at most {limit}" if len(length) <= MAX_DIGITS else f"the body is over {limit} bytes")
        try:
            body = self.rfile.read(int(length))
        except TimeoutError:
            raise ClientGone(f"sent no more of its body for {self.server.config.timeout:g} s") from None
        if len(body) < int(length):
            raise ClientGone(f"closed the connection after {len(body)} of its {length} bytes of body")
        return body

    def wait_for(self, job: Job) -> list[dict]:
        """The job's predictions; the job is dropped if the client leaves or ``timeout`` passes first."""
        deadline = time.monotonic() + self.server.config.timeout
        while True:
            try:
                return job.future.result(min(POLL, max(0.0, deadline - time.monotonic())))
            except TimeoutError:
                gone = self.client_gone()
                if gone or time.monotonic() >= deadline:
                    self.server.batcher.drop(job)
                    if gone:
                        raise ClientGone("closed the connection before its answer was ready") from None
                    raise

    def client_gone(self) -> bool:
        """True when the client has closed or reset its connection: it can no longer read an answer."""
        poller = select.poll()
        poller.register(self.connection, select.POLLIN)
        if not poller.poll(0):
            return False  # nothing to read: still there, waiting
        try:
            return not self.connection.recv(1, socket.MSG_PEEK)  # b"": closed; bytes: its next request
        except OSError:
            return True

    def send_json(self, status: int, obj: dict, headers: dict | None = None) -> None:
        try:
            body = json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate the client sent, echoed: escaped, the JSON stays valid
            body = json.dumps(obj).encode("ascii")
        self.send(status, body, "application/json", headers)

    def send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        if not self.server.quiet:
            log.info(f"{self.address_string()} {format % args}")


class TextpipeServer(ThreadingHTTPServer):
    """A ``ThreadingHTTPServer`` (one thread per connection) sharing one :class:`Batcher`."""

    daemon_threads = True  # open keep-alive connections do not hold up shutdown
    # Connections the kernel holds until accepted (Linux caps it at net.core.somaxconn). At http.server's
    # 5, a burst of 200 clients had most of its connections dropped, and retried a second or more later.
    request_queue_size = 1024

    def __init__(self, predictor: Predictor, config: ServeConfig, quiet: bool = False, model: str = ""):
        self.config, self.quiet, self.model = config, quiet, model
        self.labels = predictor.labels
        self.batcher: Batcher | None = None  # a failed bind calls server_close before there is one
        super().__init__((config.host, config.port), Handler)  # binds first: a taken port leaves no worker thread behind
        self.batcher = Batcher(predictor, config.max_batch, config.max_queue, config.max_work)

    def health(self) -> dict:
        limits = {"max_texts": self.config.max_texts, "max_chars": self.config.max_chars, "max_body": self.config.max_body,
                  "max_work": self.config.max_work}
        return {"status": "ok", "model": self.model, "labels": self.labels, "limits": limits, **self.batcher.stats,
                "dropped": self.batcher.dropped}

    def handle_error(self, request, client_address) -> None:
        """One line on stderr, never a traceback: a lost connection is the client's doing, anything else a bug."""
        err = sys.exc_info()[1]
        kind = "connection lost" if isinstance(err, OSError) else "internal error"
        log.error(f"{client_address[0]}:{client_address[1]} {kind}: {type(err).__name__}: {err}")

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
    # No sentence cache: every request's text would be kept on disk, and each batch would read them all back.
    predictor = Predictor.load(model_dir, sentence_cache=None)
    try:
        server = make_server(predictor, config, quiet, model=str(model_dir))
    except OSError as err:  # the port is taken, or the address is not this machine's
        raise ServeError(f"cannot listen on {config.host}:{config.port}: {err.strerror or err}; choose another --port (0: any free one)") from None
    host, port = server.server_address[:2]
    log.warning(f"serving {model_dir} on http://{host}:{port}/  (POST /predict, GET /healthz; Ctrl-C stops)")  # even with --quiet: where to connect
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
