"""Headless Chromium driven over the DevTools protocol on a pipe: no driver, no Python package.

Chromium started with ``--remote-debugging-pipe`` reads protocol commands from fd 3
and writes answers to fd 4, each a JSON message ended by a NUL byte (what Puppeteer
does with ``pipe: true``). Used by ``tests/test_serve.py`` and, to make the README's
screenshot:

    python tests/browser.py --model runs/default --text "a gorgeous, witty, seductive movie." --out docs/serve.png
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BINARIES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    return next((path for name in BINARIES if (path := shutil.which(name))), None)


class Chromium:
    """One headless browser with one page.

    Example:
        >>> with Chromium(find_chromium()) as page:
        ...     page.goto("http://127.0.0.1:8000/")
        ...     page.evaluate("document.title")
        'textpipe'
    """

    def __init__(self, binary: str, width: int = 900, height: int = 640):
        to_browser, self._command_out = _high_pipe()
        self._answer_in, from_browser = _high_pipe()
        self.profile = tempfile.mkdtemp(prefix="textpipe-chromium-")
        flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--no-default-browser-check", "--remote-debugging-pipe", f"--user-data-dir={self.profile}",
                 f"--window-size={width},{height}", "--hide-scrollbars", "about:blank"]
        # A tiny Python launcher puts the pipe ends at fds 3 and 4, where Chromium looks for them
        # (dash, Debian's sh, cannot redirect fds above 9; preexec_fn is unsafe beside threads).
        launch = "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); os.execv(sys.argv[3], sys.argv[3:])"
        self.process = subprocess.Popen([sys.executable, "-c", launch, str(to_browser), str(from_browser), binary, *flags],
                                        pass_fds=(to_browser, from_browser), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser)
        os.close(from_browser)
        self._buffer, self._next_id, self.session = b"", 0, None
        target = next(t for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self.session = self.send("Target.attachToTarget", targetId=target["targetId"], flatten=True)["sessionId"]
        self.send("Page.enable")

    def send(self, method: str, timeout: float = 20.0, **params) -> dict:
        """Send one command and wait for its answer (events on the way are dropped)."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if self.session and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self.session
        os.write(self._command_out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            answer = self._read(deadline)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("no answer from chromium")
            ready = _wait_readable(self._answer_in, deadline - time.monotonic())
            chunk = os.read(self._answer_in, 1 << 16) if ready else b""
            if ready and not chunk:
                raise RuntimeError("chromium closed the pipe (it exited)")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def goto(self, url: str, timeout: float = 20.0) -> None:
        self.send("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'", timeout)

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        while not (value := self.evaluate(expression)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"still false after {timeout:g} s: {expression}")
            time.sleep(0.05)
        return value

    def type(self, selector: str, text: str) -> None:
        """Focus the element and type ``text`` into it, as a keyboard would (input events fire)."""
        self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        self.send("Input.insertText", text=text)

    def click(self, selector: str) -> None:
        """A real mouse click at the middle of the element."""
        box = self.evaluate(f"(r => [r.x + r.width / 2, r.y + r.height / 2])(document.querySelector({json.dumps(selector)}).getBoundingClientRect())")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def screenshot(self, path: str | Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._command_out)
        os.close(self._answer_in)
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _high_pipe() -> tuple[int, int]:
    """A pipe whose ends are above fd 4, so the shell's ``3<&R 4>&W`` cannot overwrite one with the other."""
    import fcntl

    ends = []
    for fd in os.pipe():
        ends.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10))
        os.close(fd)
    return ends[0], ends[1]


def _wait_readable(fd: int, timeout: float) -> bool:
    import select

    return bool(select.select([fd], [], [], max(timeout, 0))[0])


RESULT = """JSON.stringify({
  label: document.getElementById('label').textContent,
  bars: [...document.querySelectorAll('#bars .bar')].map(b => [b.querySelector('.name').textContent, b.querySelector('.fill').style.width]),
  tokens: [...document.querySelectorAll('#tokens .token')].map(s => [s.textContent, Number(s.dataset.weight), s.style.backgroundColor]),
})"""


def label_on_page(page: Chromium, url: str, text: str) -> dict:
    """Open the page, type ``text``, click the button and return what the page then shows."""
    page.goto(url)
    page.type("#text", text)
    page.click("#submit")
    page.wait_for("!document.getElementById('result').hidden")
    return json.loads(page.evaluate(RESULT))


def main() -> None:
    parser = argparse.ArgumentParser(description="screenshot of textpipe serve's page with a text labelled")
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--text", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from textpipe.bundle.predict import Predictor
    from textpipe.bundle.serve import ServeConfig, make_server

    server = make_server(Predictor.load(args.model), ServeConfig(port=0), quiet=True, model=args.model.name)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    binary = find_chromium() or sys.exit("no chromium on PATH: apt-get install chromium")
    try:
        with Chromium(binary, height=700) as page:
            print(label_on_page(page, f"http://127.0.0.1:{server.server_address[1]}/", args.text))
            page.screenshot(args.out)
    finally:
        server.shutdown()
        server.server_close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
