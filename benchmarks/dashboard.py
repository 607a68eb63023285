"""Scale benchmark: an experiment of N finished trials x S intermediate results, served by the real dashboard
server; API latency (median / p95), also while trials land; in headless Chromium the time until each page is
ready and its memory; the engine's time to resume the experiment and its memory (RSS) while it runs and serves.

    python benchmarks/dashboard.py --trials 100000          # 100,000 x 20 (the issue's scale targets)
    python benchmarks/dashboard.py                          # 10,000 x 20, 200 requests per endpoint
    python benchmarks/dashboard.py --trials 20000 --steps 50 --json out.json
    python benchmarks/dashboard.py --no-browser --no-resume

Targets (issue 16): every API call median < 50 ms, also while trials land (one lands whole before each request); trials page ready < 1.5 s and
every page < 300 MB of renderer memory in headless Chromium; ``resume`` ready < 5 s and engine RSS < 250 MB at
100,000 trials x 20 results.

The store is written by :func:`build_store`, a fast path that writes exactly the rows, columns, indexes and
events the engine writes (``tests/test_dashboard_scale.py`` checks it against a store the engine wrote): the
experiment rows through the engine's own store calls, then the trials in bulk with the values the engine and
the local training service record (5-character ids, pid, host ``localhost``, ``exit code 1`` on failure, the
reported dict as the final result).  Trial folders (logs) are not written.  "While trials land", a thread
makes the engine's store calls for a new trial (add, start, S intermediate results, final result, end) at
``--land-rate`` trials a second.
"""
from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import math
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hpo.storage import ExperimentStore, _dumps  # noqa: E402

SPACE = {"x": {"_type": "uniform", "_value": [-5, 10]}, "y": {"_type": "uniform", "_value": [0, 15]},
         "lr": {"_type": "loguniform", "_value": [1e-4, 1e-1]},
         "act": {"_type": "choice", "_value": ["relu", "tanh", "sigmoid"]},
         "depth": {"_type": "randint", "_value": [1, 9]}}
EXPERIMENT_ID = "bench0001"
TRAIN = """
import hpo
p = hpo.get_next_parameter()
for step in range(3):
    hpo.report_intermediate_result(p["x"] + step)
hpo.report_final_result({"default": p["x"], "loss": p["x"] / 10})
"""


def bench_config(directory: Path, trials: int) -> dict[str, Any]:
    """The experiment's config as ``Experiment`` records it (``ExperimentConfig.to_dict()``), with a trial
    command that runs (for the resume benchmark)."""
    from hpo.config import ExperimentConfig

    code = directory / "code"
    code.mkdir(parents=True, exist_ok=True)
    (code / "train.py").write_text(TRAIN)
    config = ExperimentConfig.from_dict({
        "experiment_name": f"bench-{trials}", "search_space": SPACE, "trial_concurrency": 8,
        "max_trial_number": trials, "trial_command": "python3 train.py", "trial_code_directory": str(code),
        "tuner": {"name": "random", "class_args": {"optimize_mode": "minimize"}},
        "training_service": {"platform": "local"}})
    return config.to_dict()


def _params(rng: random.Random) -> dict[str, Any]:
    return {"x": rng.uniform(-5, 10), "y": rng.uniform(0, 15),
            "lr": math.exp(rng.uniform(math.log(1e-4), math.log(1e-1))),
            "act": rng.choice(["relu", "tanh", "sigmoid"]), "depth": rng.randrange(1, 9)}


def _objective(p: dict[str, Any], rng: random.Random) -> float:
    """Branin plus noise (a bit worse with sigmoid)."""
    b = (p["y"] - 5.1 / (4 * math.pi ** 2) * p["x"] ** 2 + 5 / math.pi * p["x"] - 6) ** 2 + \
        10 * (1 - 1 / (8 * math.pi)) * math.cos(p["x"]) + 10
    return b * (1 + 0.1 * rng.random()) + (0.5 if p["act"] == "sigmoid" else 0)


def _new_ids(rng: random.Random, n: int) -> list[str]:
    """n distinct trial ids as the engine makes them (5 letters or digits)."""
    from hpo.dispatcher import _ID_ALPHABET

    ids: dict[str, None] = {}
    while len(ids) < n:
        ids["".join(rng.choice(_ID_ALPHABET) for _ in range(5))] = None
    return list(ids)


def build_store(directory: Path, trials: int, steps: int, seed: int = 0, experiment_id: str = EXPERIMENT_ID,
                failures: Iterable[int] | None = None) -> float:
    """Write an experiment with ``trials`` finished trials of ``steps`` intermediate results each (3% fail part
    way, or the trials numbered in ``failures``), as the engine would have: see the module's docstring.
    Returns the seconds it took."""
    rng = random.Random(seed)
    fail = set(failures) if failures is not None else None
    t0 = time.perf_counter()
    config = bench_config(directory, trials)
    store = ExperimentStore(directory)
    store.create_experiment(experiment_id, config["experiment_name"], config)   # the engine's own calls
    store.set_config(config)
    store.set_runtime(os.getpid(), "127.0.0.1", None)
    store.set_status("RUNNING", None, 0.0)
    start = time.time() - trials * 2.0
    ids = _new_ids(rng, trials)
    conn = store._conn
    conn.execute("BEGIN")
    trial_rows, metric_rows = [], []

    def flush() -> None:
        conn.executemany("INSERT INTO trials (seq, id, parameters, status, created_at, started_at, ended_at, "
                         "exit_code, message, final, final_value, pid, pgid, host, gpus, rerun_of, interrupted, "
                         "processes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'localhost', '[]', NULL, 0, NULL)",
                         trial_rows)
        conn.executemany("INSERT INTO metrics (trial_seq, kind, step, value, data, ts) VALUES (?, ?, ?, ?, ?, ?)",
                         metric_rows)
        trial_rows.clear()
        metric_rows.clear()

    for seq in range(1, trials + 1):
        p = _params(rng)
        final = _objective(p, rng)
        failed = rng.random() < 0.03 if fail is None else seq in fail
        t_start = start + seq * 2.0
        t_end = t_start + rng.uniform(1.0, 6.0)
        pid = 10000 + seq % 50000
        result = {"default": final, "loss": final / 10}
        trial_rows.append((seq, ids[seq - 1], _dumps(p), "FAILED" if failed else "SUCCEEDED", t_start - 0.003,
                           t_start, t_end, 1 if failed else 0, "exit code 1" if failed else None,
                           None if failed else _dumps(result), None if failed else final, pid, pid))
        n = rng.randrange(steps // 3, steps) if failed else steps
        for step in range(1, n + 1):
            v = final * (1 + 3 * math.exp(-step / 8)) + rng.gauss(0, 0.05 * final)
            metric_rows.append((seq, "intermediate", step, v, _dumps(v), t_start + step * (t_end - t_start) / (steps + 1)))
        if not failed:
            metric_rows.append((seq, "final", 0, final, _dumps(result), t_end - 0.001))
        if len(metric_rows) > 200000:
            flush()
    flush()
    conn.execute("COMMIT")
    store.set_status("NO_MORE_TRIAL")
    store.set_status("DONE", None, trials * 2.0 + 6)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    return time.perf_counter() - t0


class Lander:
    """Makes the engine's store calls for new trials on a thread, ``rate`` trials a second: add, start,
    ``steps`` intermediate results, final result, end (as the engine does, one commit each)."""

    def __init__(self, directory: Path, steps: int, rate: float, seed: int = 7) -> None:
        self.store = ExperimentStore(directory)
        self.steps, self.rate = steps, rate
        self.rng = random.Random(seed)
        self.landed = 0
        self._stop = threading.Event()
        self.lock = threading.Lock()  # one trial landing at a time (a store is one connection)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "Lander":
        self.thread.start()
        return self

    def touch(self) -> None:
        """One more trial, landed whole (added, started, its final result, ended: the engine's calls), so that the
        next request surely finds the trials changed."""
        with self.lock:
            self._land(steps=0)

    def _land(self, steps: int) -> None:
        from hpo.dispatcher import _ID_ALPHABET

        seq = self.store.next_seq()
        tid = "".join(self.rng.choice(_ID_ALPHABET) for _ in range(5))
        while self.store.trial(tid) is not None:
            tid = "".join(self.rng.choice(_ID_ALPHABET) for _ in range(5))
        p = _params(self.rng)
        final = _objective(p, self.rng)
        self.store.add_trial(seq, tid, p)
        self.store.trial_started(seq, 4242, 4242, "localhost", [])
        for step in range(1, steps + 1):
            v = final * (1 + 3 * math.exp(-step / 8))
            self.store.add_metric(seq, "intermediate", step, v, v)
        self.store.add_metric(seq, "final", 0, final, {"default": final, "loss": final / 10})
        self.store.trial_ended(seq, "SUCCEEDED", 0, None)
        self.landed += 1

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            with self.lock:
                self._land(self.steps)
            next_at += 1.0 / self.rate
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(30)
        self.store.close()


class Server:
    """The real dashboard app (read-only, as ``hpo view`` serves it) on a thread."""

    def __init__(self, directory: Path) -> None:
        from webui.server import DASH_KEY, ApiServer, create_app

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.app = create_app(directory, "bench-token", None)
        self.server = ApiServer(self.app, self.sock)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait(30)
        # the dashboard loads its trial index (and, for a large experiment, importance) on a thread once it
        # starts; the timings are of a server that has
        warm = getattr(self.app[DASH_KEY].main.reader, "warming", None)
        if warm is not None:
            warm.join(300)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.start())
        self.ready.set()
        self.loop.run_forever()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def timed_requests(port: int, paths: Callable[[int], str], n: int, before: Callable[[], None] | None = None
                   ) -> tuple[list[float], int]:
    """Latencies (ms) of n sequential GETs over one keep-alive connection, and the last body's size."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    out, size = [], 0
    for i in range(n):
        if before is not None:
            before()
        path = paths(i)
        t = time.perf_counter()
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        out.append((time.perf_counter() - t) * 1000)
        if resp.status != 200:
            raise RuntimeError(f"{path}: HTTP {resp.status}: {body[:200]!r}")
        size = len(body)
    conn.close()
    return out, size


def summary(ms: list[float]) -> dict[str, float]:
    ms = sorted(ms)
    return {"median_ms": round(statistics.median(ms), 2), "p95_ms": round(ms[max(0, math.ceil(0.95 * len(ms)) - 1)], 2),
            "max_ms": round(ms[-1], 2), "n": len(ms)}


def bench_api(directory: Path, port: int, trials: int, n: int, lander: Lander | None) -> dict[str, Any]:
    """Latency of each endpoint; the cases marked "while trials land" run with ``lander`` landing trials and
    one more commit before each request, so that every request finds the store changed."""
    rng = random.Random(1)
    with ExperimentStore(directory, readonly=True) as reader:
        ids = [r[0] for r in reader._query("SELECT id FROM trials ORDER BY random() LIMIT 1000")]
    pages = max(1, trials // 100)
    landing = lander.touch if lander is not None else None
    cases: list[tuple[str, Callable[[int], str], Callable[[], None] | None]] = [
        ("trials page (100 rows, by seq, random offset)",
         lambda i: f"/api/v1/trials?limit=100&offset={rng.randrange(pages) * 100}", None),
        ("trials page (sorted by value desc)",
         lambda i: f"/api/v1/trials?limit=100&offset={rng.randrange(pages) * 100}&sort=value&order=desc", None),
        ("trials page (sorted by a parameter)",
         lambda i: f"/api/v1/trials?limit=100&offset={rng.randrange(pages // 2) * 100}&sort=param.lr", None),
        ("trials page (status + parameter-range filter)",
         lambda i: "/api/v1/trials?limit=100&status=SUCCEEDED&filter=param.x%3E%3D0&filter=param.x%3C5&sort=value",
         None),
        ("one trial (parameters + metrics)", lambda i: f"/api/v1/trials/{rng.choice(ids)}", None),
        ("chart data (unchanged: cached)", lambda i: "/api/v1/chart-data", None),
        ("experiment (overview)", lambda i: "/api/v1/experiment", None),
        ("importance", lambda i: "/api/v1/importance", None),
    ]
    landing_cases: list[tuple[str, Callable[[int], str], Callable[[], None] | None]] = []
    if lander is not None:
        landing_cases += [
            ("trials page, by seq (while trials land)",
             lambda i: f"/api/v1/trials?limit=100&offset={rng.randrange(pages) * 100}", landing),
            ("trials page, sorted by value desc (while trials land)",
             lambda i: f"/api/v1/trials?limit=100&offset={rng.randrange(pages) * 100}&sort=value&order=desc", landing),
            ("trials page, sorted by a parameter (while trials land)",
             lambda i: f"/api/v1/trials?limit=100&offset={rng.randrange(pages // 2) * 100}&sort=param.lr", landing),
            ("trials page, status + parameter filter (while trials land)",
             lambda i: "/api/v1/trials?limit=100&status=SUCCEEDED&filter=param.x%3E%3D0&filter=param.x%3C5&sort=value",
             landing),
            ("trials page, search (while trials land)", lambda i: "/api/v1/trials?limit=100&q=relu&sort=param.x",
             landing),
            ("chart data (while trials land)", lambda i: "/api/v1/chart-data", landing),
            ("curves: best 50 + quartile bands (while trials land)", lambda i: "/api/v1/metrics?top=50&bands=true",
             landing),
            ("curves: best 20, no bands (while trials land)", lambda i: "/api/v1/metrics?top=20", landing),
            ("experiment (overview; while trials land)", lambda i: "/api/v1/experiment", landing),
            ("importance (while trials land)", lambda i: "/api/v1/importance", landing),
        ]
    out: dict[str, Any] = {}
    for name, path, before in cases + landing_cases:
        if before is not None and lander is not None and not lander.thread.is_alive():
            lander.start()
        count = n if before is None else max(20, n // 2)
        first, _ = timed_requests(port, path, 3, before)  # warm-up
        ms, size = timed_requests(port, path, count, before)
        out[name] = {**summary(ms), "bytes": size, "first_request_ms": round(first[0], 2)}
        print(f"  {name:62s} median {out[name]['median_ms']:7.2f} ms   p95 {out[name]['p95_ms']:7.2f} ms"
              f"   ({size / 1024:.0f} KiB, n={count}; first {first[0]:.0f} ms)", flush=True)
    if lander is not None:
        out["trials landed meanwhile"] = lander.landed
        print(f"  ({lander.landed} trials landed meanwhile, {lander.rate:g}/s)", flush=True)
    # importance is recomputed on a thread at most every 5 s; time one computation from a fresh reader
    from webui.queries import Reader
    reader = Reader(directory)
    t = time.perf_counter()
    imp = reader.importance(False)
    out["importance computation (uncached)"] = {"ms": round((time.perf_counter() - t) * 1000, 1), "n": imp["n"],
                                                "method": imp["method"]}
    reader.close()
    print(f"  {'importance computation (on its own thread, at most every 5 s)':62s} "
          f"{out['importance computation (uncached)']['ms']:7.1f} ms", flush=True)
    return out


def bench_browser(port: int, chromium: str, runs: int) -> dict[str, Any]:
    import psutil
    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic", "--disable-dev-shm-usage", "--mute-audio"]
    url = f"http://127.0.0.1:{port}/"
    result: dict[str, Any] = {"runs": []}
    with sync_playwright() as p:
        for run in range(runs):
            profile = tempfile.mkdtemp(prefix="hpo-bench-chromium-")
            ctx = p.chromium.launch_persistent_context(profile, executable_path=chromium, args=args, headless=True,
                                                       viewport={"width": 1440, "height": 900})
            page = ctx.pages[0] if ctx.pages else ctx.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            t = time.perf_counter()
            page.goto(url + "#/trials")
            deadline = time.monotonic() + 30
            while not page.evaluate("window.__hpo && window.__hpo.ready.trials"):
                if time.monotonic() > deadline:
                    raise RuntimeError("the trials page did not become interactive")
                page.wait_for_timeout(10)
            wall = (time.perf_counter() - t) * 1000
            ready = page.evaluate("window.__hpo.ready.trials")
            rows = page.locator(".vt-row[data-id]").count()
            total = page.locator("[data-testid=trial-count]").inner_text()
            # click a header to sort by value: time until the first row shows the new order
            t = time.perf_counter()
            page.click(".vt-th[data-col=value]")
            page.wait_for_selector(".vt-th[data-col=value][aria-sort]")
            page.evaluate("""() => new Promise((resolve) => { const check = () => {
                const r = document.querySelector('.vt-row[data-id]'); if (r) resolve(); else requestAnimationFrame(check); };
                check(); })""")
            sort_ms = (time.perf_counter() - t) * 1000
            # scroll from top to bottom in 40 steps: frame times while rows stream in
            frames = page.evaluate("""async () => {
                const s = document.querySelector('.vt-scroll'); const times = []; let last = performance.now();
                for (let k = 1; k <= 40; k++) {
                    s.scrollTop = s.scrollHeight * k / 40;
                    await new Promise((r) => requestAnimationFrame(r));
                    const now = performance.now(); times.push(now - last); last = now;
                }
                const t0 = performance.now();
                while (!document.querySelector('.vt-row[data-id]') || document.querySelector('.vt-row.loading')) {
                    await new Promise((r) => setTimeout(r, 10));
                    if (performance.now() - t0 > 10000) break;
                }
                return { frames: times, settle: performance.now() - t0 };
            }""")
            last_row = page.locator(".vt-row[data-id]").last.get_attribute("data-id")
            cdp = ctx.new_cdp_session(page)
            cdp.send("Performance.enable")
            metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
            browser_pid = None
            for proc in psutil.process_iter(["pid", "cmdline"]):
                cmd = proc.info["cmdline"] or []
                if cmd and "--type=renderer" in cmd and any(profile in c for c in cmd):
                    browser_pid = proc.info["pid"]
            renderer_rss = psutil.Process(browser_pid).memory_info().rss if browser_pid else None
            renderer_uss = psutil.Process(browser_pid).memory_full_info().uss if browser_pid else None
            one = {"interactive_ms": round(ready, 1), "goto_to_interactive_wall_ms": round(wall, 1),
                   "rows_in_dom": rows, "count_label": total, "sort_by_value_ms": round(sort_ms, 1),
                   "scroll_frame_median_ms": round(statistics.median(frames["frames"]), 1),
                   "scroll_frame_max_ms": round(max(frames["frames"]), 1),
                   "scroll_settle_ms": round(frames["settle"], 1), "last_row_after_scroll": last_row,
                   "js_heap_used_mb": round(metrics.get("JSHeapUsedSize", 0) / 2**20, 1),
                   "js_heap_total_mb": round(metrics.get("JSHeapTotalSize", 0) / 2**20, 1),
                   "dom_nodes": int(metrics.get("Nodes", 0)),
                   "renderer_rss_mb": round(renderer_rss / 2**20, 1) if renderer_rss else None,
                   "renderer_uss_mb": round(renderer_uss / 2**20, 1) if renderer_uss else None,
                   "errors": errors}
            # the other pages, from a warm browser (navigation inside the app); each page's memory after it
            for name in ("overview", "charts"):
                t = time.perf_counter()
                page.evaluate(f"location.hash = '#/{name}'")
                deadline = time.monotonic() + 60
                while not page.evaluate(f"window.__hpo.ready.{name}"):
                    if time.monotonic() > deadline:
                        break
                    page.wait_for_timeout(10)
                one[f"{name}_page_ms"] = round((time.perf_counter() - t) * 1000, 1)
                page.wait_for_timeout(300)  # the charts drawn
                if browser_pid:
                    proc = psutil.Process(browser_pid)
                    one[f"{name}_renderer_rss_mb"] = round(proc.memory_info().rss / 2**20, 1)
                    one[f"{name}_renderer_uss_mb"] = round(proc.memory_full_info().uss / 2**20, 1)
            one["chart_data_kib_per_load"] = page.evaluate("""() => {
                const e = performance.getEntriesByType('resource').filter((r) => r.name.includes('/chart-data'));
                return e.length ? Math.round(Math.max(...e.map((r) => r.encodedBodySize || r.transferSize)) / 1024) : null;
            }""")
            metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
            one["js_heap_used_after_charts_mb"] = round(metrics.get("JSHeapUsedSize", 0) / 2**20, 1)
            if browser_pid:
                proc = psutil.Process(browser_pid)
                one["renderer_rss_after_charts_mb"] = round(proc.memory_info().rss / 2**20, 1)
                one["renderer_uss_after_charts_mb"] = round(proc.memory_full_info().uss / 2**20, 1)
            result["runs"].append(one)
            print(f"  run {run + 1}: trials page interactive {one['interactive_ms']:.0f} ms "
                  f"(goto->interactive {one['goto_to_interactive_wall_ms']:.0f} ms), sort {one['sort_by_value_ms']:.0f} ms, "
                  f"scroll frame median {one['scroll_frame_median_ms']} ms, JS heap {one['js_heap_used_mb']} MB, "
                  f"renderer RSS {one['renderer_rss_mb']} MB (USS {one['renderer_uss_mb']} MB); overview {one['overview_page_ms']:.0f} ms, "
                  f"charts {one['charts_page_ms']:.0f} ms, heap after charts {one['js_heap_used_after_charts_mb']} MB, "
                  f"RSS {one.get('renderer_rss_after_charts_mb')} MB (USS {one.get('renderer_uss_after_charts_mb')} MB), "
                  f"overview RSS {one.get('overview_renderer_rss_mb')} MB; chart data {one['chart_data_kib_per_load']} KiB "
                  "per load", flush=True)
            ctx.close()
            shutil.rmtree(profile, ignore_errors=True)
    runs_ = result["runs"]
    result["interactive_ms_median"] = statistics.median(r["interactive_ms"] for r in runs_)
    result["renderer_rss_mb_max"] = max(max(r.get(k) or 0 for k in ("renderer_rss_after_charts_mb", "renderer_rss_mb",
                                                                     "overview_renderer_rss_mb", "charts_renderer_rss_mb"))
                                        for r in runs_)
    result["charts_page_ms_median"] = statistics.median(r["charts_page_ms"] for r in runs_)
    result["chart_data_kib_per_load"] = max(r["chart_data_kib_per_load"] or 0 for r in runs_)
    result["js_heap_used_mb_max"] = max(r["js_heap_used_after_charts_mb"] for r in runs_)
    result["renderer_uss_mb_max"] = max((r.get("renderer_uss_after_charts_mb") or r["renderer_uss_mb"] or 0) for r in runs_)
    return result


RESUME_CHILD = """
import json, sys, time
t_spawn = float(sys.argv[3])
sys.path.insert(0, sys.argv[4])
from hpo import Experiment

def mem():
    out = {}
    for line in open("/proc/self/status"):
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = round(int(line.split()[1]) / 1024, 1)
    return out

t, t_wall = time.perf_counter(), time.time()
exp = Experiment.resume(sys.argv[1], port=0, wait_completion=False, max_trial_number=int(sys.argv[2]))
ready = time.perf_counter() - t
from hpo.storage import ExperimentStore
with ExperimentStore(exp.directory, readonly=True) as store:  # when the engine recorded RUNNING (trials can run)
    running_at = max(e["ts"] for e in store.events_of_kind("status") if e["data"].get("status") == "RUNNING")
print(json.dumps({"ready_s": round(ready, 3), "running_s": round(running_at - t_wall, 3),
                  "since_spawn_s": round(time.time() - t_spawn, 3), "port": exp.port,
                  "status": exp.get_status(), **{f"{k}_at_ready_mb": v for k, v in mem().items()}}), flush=True)
sys.stdin.readline()                                  # the parent has done its dashboard requests
exp.wait(600)
print(json.dumps({"status": exp.get_status(), **{f"{k}_at_end_mb": v for k, v in mem().items()}}), flush=True)
exp.stop()
"""


def bench_resume(tmp: Path, trials: int, extra: int) -> dict[str, Any]:
    """``Experiment.resume`` of the stored experiment in a process of its own (what ``hpo resume`` runs), with
    ``extra`` more trials to run: the time until it is ready (RUNNING, its dashboard serving), and its memory
    (RSS) then, while the dashboard serves the heaviest reads (chart data, sorted pages, the overview, the full
    export and NNI's trial list and metrics, all streamed) and at the end."""
    import psutil

    env = {**os.environ, "HPO_HOME": str(tmp)}
    t_spawn = time.time()
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(RESUME_CHILD), EXPERIMENT_ID, str(trials + extra),
                             str(t_spawn), str(ROOT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        first = json.loads(proc.stdout.readline())   # type: ignore[union-attr]
        print(f"  resume ready in {first['ready_s']:.2f} s: the engine RUNNING after {first['running_s']:.2f} s, then "
              f"Experiment.resume() returned (its dashboard serving); process start to ready "
              f"{first['since_spawn_s']:.2f} s; engine RSS {first.get('VmRSS_at_ready_mb')} MB", flush=True)
        child = psutil.Process(proc.pid)
        peak = [child.memory_info().rss]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                try:
                    peak.append(child.memory_info().rss)
                except psutil.Error:
                    return
                stop.wait(0.05)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        reads: dict[str, Any] = {}
        conn = http.client.HTTPConnection("127.0.0.1", first["port"], timeout=120)
        for path in ("/api/v1/experiment", "/api/v1/trials?limit=100&sort=param.lr", "/api/v1/trials?limit=100&sort=value",
                     "/api/v1/chart-data", "/api/v1/metrics?top=50&bands=true", "/api/v1/importance", "/api/v1/export",
                     "/api/v1/nni/trial-jobs", "/api/v1/nni/metric-data", "/api/v1/nni/export-data"):
            t = time.perf_counter()
            conn.request("GET", path)
            resp = conn.getresponse()
            size = len(resp.read())
            reads[path] = {"ms": round((time.perf_counter() - t) * 1000, 1), "kib": round(size / 1024), "status": resp.status}
        conn.close()
        proc.stdin.write("go\n")   # type: ignore[union-attr]
        proc.stdin.flush()          # type: ignore[union-attr]
        last = json.loads(proc.stdout.readline())    # type: ignore[union-attr]
        stop.set()
        sampler.join(5)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = {**first, **last, "reads": reads, "rss_peak_sampled_mb": round(max(peak) / 2**20, 1),
           "extra_trials": extra}
    print(f"  engine RSS: at ready {first.get('VmRSS_at_ready_mb')} MB, peak {last.get('VmHWM_at_end_mb')} MB (while "
          f"serving the reads above and running {extra} more trials; sampled peak {out['rss_peak_sampled_mb']} MB); "
          f"ended {last['status']}", flush=True)
    for path, r in reads.items():
        print(f"    {path:45s} {r['ms']:8.1f} ms  {r['kib']:8d} KiB", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=10000)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--requests", type=int, default=200, help="requests per endpoint")
    ap.add_argument("--land-rate", type=float, default=25.0,
                    help="trials a second landing during the 'while trials land' cases (0: none)")
    ap.add_argument("--browser-runs", type=int, default=3)
    ap.add_argument("--no-browser", action="store_true")
    ap.add_argument("--no-resume", action="store_true")
    ap.add_argument("--resume-trials", type=int, default=40, help="trials the resumed experiment runs")
    ap.add_argument("--chromium", default=os.environ.get("HPO_CHROMIUM", "/usr/bin/chromium"))
    ap.add_argument("--json", help="write the figures to this file")
    ap.add_argument("--keep", help="build the store in this folder and keep it")
    args = ap.parse_args(argv)

    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="hpo-dashboard-bench-"))
    directory = tmp / EXPERIMENT_ID
    if directory.exists():
        shutil.rmtree(directory)
    print(f"building a store: {args.trials} trials x {args.steps} intermediate results in {directory}", flush=True)
    seconds = build_store(directory, args.trials, args.steps)
    size = sum(f.stat().st_size for f in directory.iterdir() if f.is_file()) / 2**20
    print(f"  built in {seconds:.1f} s ({size:.0f} MiB)", flush=True)
    figures: dict[str, Any] = {"trials": args.trials, "steps": args.steps, "store_mib": round(size, 1),
                               "cpus": os.cpu_count(), "loadavg_before": os.getloadavg()}
    server = Server(directory)
    lander = Lander(directory, args.steps, args.land_rate) if args.land_rate > 0 else None  # started by bench_api
    try:
        print("API latency (sequential requests over one keep-alive connection):", flush=True)
        figures["api"] = bench_api(directory, server.port, args.trials, args.requests, lander)
        if not args.no_browser:
            print(f"headless Chromium ({args.chromium}), {args.browser_runs} cold loads of /#/trials"
                  f"{' while trials land' if lander else ''}:", flush=True)
            figures["browser"] = bench_browser(server.port, args.chromium, args.browser_runs)
    finally:
        if lander is not None:
            lander.stop()
            figures["trials_landed"] = lander.landed
        server.close()
    try:
        if not args.no_resume:
            print(f"resume (a process of its own, as `hpo resume`), {args.resume_trials} more trials:", flush=True)
            figures["resume"] = bench_resume(tmp, args.trials + figures.get("trials_landed", 0), args.resume_trials)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    figures["loadavg_after"] = os.getloadavg()
    api = figures["api"]
    timed = {k: v for k, v in api.items() if isinstance(v, dict) and "median_ms" in v}
    worst = max(timed, key=lambda k: timed[k]["median_ms"])
    print("\nsummary:")
    print(f"  API median, worst endpoint: {timed[worst]['median_ms']:.1f} ms ({worst}) (target < 50 ms)")
    for key in ("trials page, sorted by a parameter (while trials land)", "chart data (while trials land)"):
        if key in timed:
            print(f"  {key}: median {timed[key]['median_ms']:.1f} ms, {timed[key]['bytes'] / 1024:.0f} KiB")
    if "browser" in figures:
        b = figures["browser"]
        print(f"  trials page interactive (median of {len(b['runs'])}): {b['interactive_ms_median']:.0f} ms "
              "(target < 1500 ms)")
        print(f"  charts page (median): {b['charts_page_ms_median']:.0f} ms; chart data per load: "
              f"{b['chart_data_kib_per_load']} KiB")
        print(f"  page memory: JS heap <= {b['js_heap_used_mb_max']} MB, renderer private memory (USS) <= "
              f"{b['renderer_uss_mb_max']} MB, renderer RSS (with shared libraries) <= {b['renderer_rss_mb_max']} MB "
              "(target < 300 MB)")
    if "resume" in figures:
        r = figures["resume"]
        print(f"  resume ready: {r['ready_s']:.2f} s, RUNNING after {r['running_s']:.2f} s (target < 5 s; process start "
              f"to ready {r['since_spawn_s']:.2f} s)")
        print(f"  engine RSS: {r.get('VmRSS_at_ready_mb')} MB at ready, peak {r.get('VmHWM_at_end_mb')} MB "
              "(target < 250 MB)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
