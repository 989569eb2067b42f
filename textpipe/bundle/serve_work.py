"""What ``textpipe serve`` does with a request, HTTP aside: read it, cost it, score it.

:func:`parse_request` reads a ``/predict`` body and refuses, with a :class:`BadRequest`
naming the field, what the limits in :class:`ServeConfig` do not allow: JSON that is
malformed, nested too deep or holds an integer of more than ``MAX_DIGITS`` digits, a text
that is empty, too long or not valid Unicode (a lone surrogate), and more work than
``max_work`` (:func:`work_of`: characters, a long word counted more, explain more still).

:class:`Batcher` scores the requests: each request thread puts a :class:`Job` on a queue
and waits; one worker thread takes whatever is queued (up to ``max_batch`` texts and
``max_work`` units) and runs the model once for all of it. The model is thus used by one
thread only, and a burst of small requests costs a few large forward passes. When such a
pass fails, each request is scored apart: a bad text fails its own request only.
Explanations are worked out one text per turn, between the other turns, so nobody waits
long behind another's explanation; a job nobody waits for any more is dropped.
"""

from __future__ import annotations

import json
import queue
import re
import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Sequence

from .explain import add_explanations
from .predict import Predictor

EXPLAIN_COST = 5  # an explained text's work counts 5 times (measured: explaining costs 3-4 times the scoring)
WORD_COST = 10  # a word of n characters, s of them neither letters nor digits, adds n * s // 10 units (see work_of)
LETTERS = re.compile(r"[^\W_]+")  # letters and digits: spaCy never strips them off a word one by one
MAX_DIGITS = 18  # an integer in a request (or its Content-Length) has at most 18 digits


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
    max_work: int = 100_000  # units of work in one request (see work_of): about a second of the worker's time at most
    max_batch: int = 512  # texts the worker scores in one forward pass (a request is never split)
    max_queue: int = 1024  # requests waiting; beyond that the server answers 503
    timeout: float = 30.0  # seconds a request waits for its answer, and a connection for its next byte

    def __post_init__(self) -> None:
        if min(self.max_body, self.max_texts, self.max_chars, self.max_work, self.max_batch, self.max_queue) < 1 or self.timeout <= 0:
            raise ValueError(f"serve limits must be positive: {self}")


class BadRequest(ValueError):
    """The client's fault: answered with ``status`` (400; 413 for too much work) and the message."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class Job:
    texts: list[str]
    top_k: int | None
    explain: bool
    future: Future = field(default_factory=Future)
    work: int = 0
    results: list[dict] = field(default_factory=list)  # once scored; explained one text per turn
    explained: int = 0
    dropped: bool = False  # nobody waits for the answer: what is left of the job is skipped


def work_of(texts: Sequence[str], explain: bool = False) -> int:
    """Units of work of a request, each some 10 microseconds of the worker: the texts' characters, plus
    ``n * s // WORD_COST`` for each word of ``n`` characters of which ``s`` are neither letters nor digits
    (spaCy strips such characters off a word's ends one at a time, each time going over the rest of
    the word: 10,000 ``(`` in a row took 47 s), all of it ``EXPLAIN_COST`` times with ``explain``.

    Example:
        >>> work_of(["a fine film"]), work_of(["(" * 100]), work_of(["a" * 100]), work_of(["a fine film."], explain=True)
        (11, 1100, 100, 60)
    """
    symbols = sum(len(word) * len(LETTERS.sub("", word)) for text in texts for word in text.split())
    return (sum(map(len, texts)) + symbols // WORD_COST) * (EXPLAIN_COST if explain else 1)


def parse_request(body: bytes, config: ServeConfig) -> tuple[list[str], int | None, bool]:
    """``(texts, top_k, explain)`` from a ``/predict`` body; :class:`BadRequest` says what is wrong."""
    request = read_json(body)
    if not isinstance(request, dict):
        raise BadRequest('the body must be a JSON object like {"texts": ["some text"]}')
    unknown = set(request) - {"texts", "top_k", "explain"}
    if unknown:
        raise BadRequest(f"unknown field(s) {', '.join(sorted(name[:40] for name in unknown))}; known: texts, top_k, explain")
    if "texts" not in request:
        raise BadRequest('missing field "texts": a list of strings')
    texts, top_k, explain = request["texts"], request.get("top_k"), request.get("explain", False)
    if not isinstance(texts, list) or not texts:
        raise BadRequest('"texts" must be a non-empty list of strings')
    if len(texts) > config.max_texts:
        raise BadRequest(f'too many texts: {len(texts)}, at most {config.max_texts} per request')
    check_texts(texts, config)
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise BadRequest('"top_k" must be an integer >= 1')
    if not isinstance(explain, bool):
        raise BadRequest('"explain" must be true or false')
    least = sum(map(len, texts)) * (EXPLAIN_COST if explain else 1)  # found at once: a long request is not gone through
    work = least if least > config.max_work else work_of(texts, explain)
    if work > config.max_work:
        raise BadRequest(f"too much work: {'at least ' if work == least else ''}{work:,} units, at most {config.max_work:,} per request "
                         f"(a unit is a character; a word of n characters, s of them neither letters nor digits, adds n*s/{WORD_COST}; "
                         f"explain counts {EXPLAIN_COST} times): send fewer or shorter texts, in several requests", 413)
    return texts, top_k, explain


def read_json(body: bytes) -> object:
    """The body parsed; nesting past Python's recursion limit and integers of more than ``MAX_DIGITS`` digits refused."""
    try:
        return json.loads(body, parse_int=bounded_int)
    except BadRequest:
        raise
    except RecursionError:
        raise BadRequest('the body is nested too deep; send an object like {"texts": ["some text"]}') from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise BadRequest(f"the body is not valid JSON: {err}") from None


def bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_DIGITS:
        raise BadRequest(f"the body holds an integer of {len(digits.lstrip('-')):,} digits, at most {MAX_DIGITS}")
    return int(digits)


def check_texts(texts: list, config: ServeConfig) -> None:
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise BadRequest(f'texts[{i}] must be a non-empty string')
        if len(text) > config.max_chars:
            raise BadRequest(f'texts[{i}] has {len(text)} characters, at most {config.max_chars}')
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise BadRequest(f"texts[{i}] is not valid Unicode: a lone surrogate {ascii(text[err.start])[1:-1]} "
                             f"at character {err.start}") from None


class Batcher:
    """One worker thread that scores the queued requests together, and explains texts one per turn.

    Example:
        >>> batcher = Batcher(Predictor.load("runs/default"))
        >>> batcher.submit(["a gorgeous movie"])[0]["label"]
        'fresh'
    """

    def __init__(self, predictor: Predictor, max_batch: int = 512, max_queue: int = 1024, max_work: int = ServeConfig.max_work):
        self.predictor, self.max_batch, self.max_queue, self.max_work = predictor, max_batch, max_queue, max_work
        self.queue: queue.Queue[Job | None] = queue.Queue(max_queue)
        self.explaining: deque[Job] = deque()  # scored, waiting for their explanations (the worker's own)
        self.stats = {"requests": 0, "texts": 0, "batches": 0, "largest_batch": 0}  # largest_batch counts requests
        self.dropped, self._count, self._stopped = 0, threading.Lock(), False
        self.worker = threading.Thread(target=self._work, name="textpipe-batcher", daemon=True)
        self.worker.start()

    def submit(self, texts: list[str], top_k: int | None = None, explain: bool = False, timeout: float | None = None) -> list[dict]:
        """Queue the texts and wait for their predictions; ``queue.Full`` when too many requests wait."""
        job = self.put(texts, top_k, explain)
        try:
            return job.future.result(timeout)
        except TimeoutError:
            self.drop(job)
            raise

    def put(self, texts: list[str], top_k: int | None = None, explain: bool = False) -> Job:
        """Queue the texts; the job's future gets their predictions. ``queue.Full`` when too many requests wait."""
        if self.queue.qsize() + len(self.explaining) >= self.max_queue:
            raise queue.Full
        job = Job(texts, top_k, explain, work=work_of(texts, explain))
        self.queue.put_nowait(job)
        return job

    def drop(self, job: Job) -> None:
        """Nobody waits for the job's answer any more: what is left of it is not worked out."""
        if not job.future.done():
            job.dropped = True
            with self._count:
                self.dropped += 1

    def close(self) -> None:
        self.queue.put(None)  # the worker stops when it takes this, after the jobs queued before it
        self.worker.join()

    def _work(self) -> None:
        while not self._stopped:
            jobs = self._take()
            if jobs:
                self._score(jobs)
            if self.explaining and not self._stopped:
                self._explain_next()

    def _take(self) -> list[Job]:
        """The queued jobs for one forward pass (waiting for one unless explanations are due)."""
        jobs: list[Job] = []
        size = work = 0
        block = not self.explaining
        while size < self.max_batch and work < self.max_work:  # a request is never split: a batch may pass these by one
            try:
                job = self.queue.get(block=block)
            except queue.Empty:
                break
            if job is None:  # close()
                self._stopped = True
                break
            block = False
            if not job.dropped:
                jobs.append(job)
                size, work = size + len(job.texts), work + job.work
        return jobs

    def _score(self, jobs: list[Job]) -> None:
        """One forward pass for the jobs' texts; if it fails, each job alone: a bad text fails its own request only."""
        texts = [text for job in jobs for text in job.texts]
        try:
            probs = self.predictor.probabilities(texts)
        except Exception as err:  # noqa: BLE001  (the requests get the error, the worker lives on)
            if len(jobs) == 1:
                jobs[0].future.set_exception(err)
            else:
                for job in jobs:
                    self._score([job])
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
                job.results = self.predictor.results(job.texts, rows, job.top_k)  # label sets for a multi-label bundle
            except Exception as err:  # noqa: BLE001
                job.future.set_exception(err)
                continue
            if job.explain:
                self.explaining.append(job)
            else:
                job.future.set_result(job.results)

    def _explain_next(self) -> None:
        """The next text of the first job in line explained; the job then goes to the back: explanations take turns."""
        job = self.explaining.popleft()
        if job.dropped:
            return
        i = job.explained
        try:
            add_explanations(job.results[i : i + 1], self.predictor.explain(job.texts[i : i + 1]), self.predictor.labels)
        except Exception as err:  # noqa: BLE001
            job.future.set_exception(err)
            return
        job.explained += 1
        if job.explained < len(job.texts):
            self.explaining.append(job)
        else:
            job.future.set_result(job.results)
