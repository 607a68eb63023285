"""Helpers for the dashboard tests: HTTP calls, an SSE reader, serving an app on a thread, the
controlled trial script, and headless Chromium (Debian's ``chromium``, driven by Playwright)."""
from __future__ import annotations

import asyncio
import http.client
import json
import os
import queue
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parent.parent

# A trial that runs until the file ``release`` appears next to it (or 60 s), reporting an intermediate
# result every 0.2 s; parameters with mode == "fail" exit 2 at once.
CONTROLLED_TRIAL = """
import os, sys, time
import hpo
p = hpo.get_next_parameter()
print("started", p, flush=True)
if p.get("mode") == "fail":
    print("failing on purpose", file=sys.stderr, flush=True)
    sys.exit(2)
gate = os.path.join(os.path.dirname(os.path.abspath(__file__)), "release")
step, deadline = 0, time.time() + 60
while not os.path.exists(gate) and time.time() < deadline:
    step += 1
    hpo.report_intermediate_result(p["x"] + step * 0.01)
    print("step", step, flush=True)
    time.sleep(0.2)
hpo.report_final_result(p["x"])
"""
CONTROLLED_SPACE = {"x": {"_type": "uniform", "_value": [0, 1]}, "mode": {"_type": "choice", "_value": ["ok"]}}


def request(url: str, method: str = "GET", body: Any = None, headers: dict[str, str] | None = None,
            timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one HTTP request; HTTP errors are returned, not raised."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def get_json(url: str, **kw: Any) -> Any:
    status, _, body = request(url, **kw)
    assert status == 200, (status, body[:500])
    return json.loads(body)


class SseReader:
    """Reads a server-sent-event stream on a thread; ``next(kind, timeout)`` returns (kind, data, t)."""

    def __init__(self, host: str, port: int, path: str, headers: dict[str, str] | None = None) -> None:
        self.conn = http.client.HTTPConnection(host, port, timeout=30)
        self.conn.request("GET", path, headers=headers or {})
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.events: queue.Queue[tuple[str, Any, float]] = queue.Queue()
        self.thread = threading.Thread(target=self._read, daemon=True)
        if self.status == 200:
            self.thread.start()

    def _read(self) -> None:
        kind, data = "message", []
        try:
            while True:
                raw = self.resp.fp.readline()
                if not raw:
                    self.events.put(("__closed__", None, time.monotonic()))
                    return
                line = raw.decode().rstrip("\r\n")
                if not line:
                    if data:
                        self.events.put((kind, json.loads("\n".join(data)), time.monotonic()))
                    kind, data = "message", []
                elif line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
        except Exception:
            self.events.put(("__closed__", None, time.monotonic()))

    def next(self, kind: str | None = None, timeout: float = 10.0) -> tuple[str, Any, float]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {kind or 'event'} within {timeout} s")
            try:
                item = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if kind is None or item[0] == kind or item[0] == "__closed__":
                return item

    def close(self) -> None:
        try:
            self.conn.sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
        except Exception:
            pass
        self.conn.close()


@contextmanager
def serve_app(directory: Path, token: str = "t0ken", engine: Any = None, public: bool = False) -> Iterator[str]:
    """Serve ``create_app(directory, ...)`` on 127.0.0.1 from a thread; yields the base URL."""
    from webui.server import ApiServer, create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    port = sock.getsockname()[1]
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop: dict[str, Any] = {}

    async def main() -> None:
        server = ApiServer(create_app(directory, token, engine, public=public), sock)
        await server.start()
        stop["event"] = asyncio.Event()
        started.set()
        await stop["event"].wait()
        await server.close()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(stop["event"].set)
        thread.join(10)
        loop.close()


def chromium_path() -> str | None:
    for candidate in (os.environ.get("HPO_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic", "--disable-dev-shm-usage",
                 "--disable-default-apps", "--mute-audio"]


def artifacts_dir() -> Path:
    """Where browser tests put screenshots: $HPO_TEST_ARTIFACTS, else <tmp>/hpo-test-artifacts."""
    import tempfile
    path = Path(os.environ.get("HPO_TEST_ARTIFACTS") or Path(tempfile.gettempdir()) / "hpo-test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def open_page(browser: Any, width: int = 1440, height: int = 900) -> Any:
    """A page in a fresh browser context that records page errors, console errors and failed requests in
    ``page.errors``, and accepts dialogs."""
    context = browser.new_context(viewport={"width": width, "height": height})
    pg = context.new_page()
    pg.errors = []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.on("console", lambda m: pg.errors.append(m.text) if m.type == "error" else None)
    pg.on("requestfailed", lambda r: pg.errors.append(f"request failed: {r.url} {r.failure}")
          if "ERR_ABORTED" not in (r.failure or "") else None)  # streams closed on leaving a page are aborted
    pg.on("dialog", lambda d: d.accept())
    pg.set_default_timeout(15000)
    return pg


def wait_js(pg: Any, expression: str, timeout: float = 10.0) -> None:
    """Poll a JS expression (page.wait_for_function evaluates strings, which the page's CSP forbids)."""
    deadline = time.monotonic() + timeout
    while not pg.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {expression}")
        pg.wait_for_timeout(50)


# Resolves once the trials table's columns have kept their widths for three frames (they widen to fit what
# the rows show, once the rows have come).
SETTLED = """() => new Promise((resolve) => {
  let last = null, same = 0;
  const look = () => {
    const head = document.querySelector('.vt-head');
    const now = head ? head.style.gridTemplateColumns : null;
    same = now !== null && now === last ? same + 1 : 0;
    last = now;
    if (same >= 3) resolve(true); else requestAnimationFrame(look);
  };
  requestAnimationFrame(look);
})"""
