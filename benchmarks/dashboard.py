"""Dashboard benchmark: a store with 10,000 trials x 50 intermediate results, served by the real
dashboard server; API latency (median / p95) and, in headless Chromium, the time until the trials
page is interactive and the page's memory.

    python benchmarks/dashboard.py                       # 10,000 x 50, 200 requests per endpoint
    python benchmarks/dashboard.py --trials 20000 --json out.json
    python benchmarks/dashboard.py --no-browser

Targets (the issue): API median < 50 ms, trials page interactive < 1.5 s, page memory < 300 MB.
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
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hpo.storage import ExperimentStore  # noqa: E402

SPACE = {"x": {"_type": "uniform", "_value": [-5, 10]}, "y": {"_type": "uniform", "_value": [0, 15]},
         "lr": {"_type": "loguniform", "_value": [1e-4, 1e-1]},
         "act": {"_type": "choice", "_value": ["relu", "tanh", "sigmoid"]},
         "depth": {"_type": "randint", "_value": [1, 9]}}


def build_store(directory: Path, trials: int, steps: int, seed: int = 0) -> float:
    """Write an experiment with ``trials`` finished trials of ``steps`` intermediate results each."""
    rng = random.Random(seed)
    t0 = time.perf_counter()
    store = ExperimentStore(directory)
    config = {"experiment_name": f"bench-{trials}x{steps}", "search_space": SPACE, "trial_concurrency": 8,
              "max_trial_number": trials, "max_experiment_duration": None, "trial_command": "python3 train.py",
              "tuner": {"name": "random", "class_args": {"optimize_mode": "minimize"}},
              "training_service": {"platform": "local"}}
    store.create_experiment("bench0001", config["experiment_name"], config)
    conn = store._conn
    start = time.time() - trials * 2.0
    trial_rows, metric_rows = [], []
    for seq in range(1, trials + 1):
        p = {"x": rng.uniform(-5, 10), "y": rng.uniform(0, 15), "lr": math.exp(rng.uniform(math.log(1e-4), math.log(1e-1))),
             "act": rng.choice(["relu", "tanh", "sigmoid"]), "depth": rng.randrange(1, 9)}
        # Branin-like objective plus noise
        b = (p["y"] - 5.1 / (4 * math.pi ** 2) * p["x"] ** 2 + 5 / math.pi * p["x"] - 6) ** 2 + \
            10 * (1 - 1 / (8 * math.pi)) * math.cos(p["x"]) + 10
        final = b * (1 + 0.1 * rng.random()) + (0.5 if p["act"] == "sigmoid" else 0)
        failed = rng.random() < 0.03
        t_start = start + seq * 2.0
        t_end = t_start + rng.uniform(1.0, 6.0)
        status = "FAILED" if failed else "SUCCEEDED"
        trial_rows.append((seq, f"t{seq:06d}", json.dumps(p, separators=(",", ":")), status, t_start - 0.01, t_start,
                           t_end, 1 if failed else 0, "exit code 1" if failed else None,
                           None if failed else json.dumps({"default": final, "loss": final / 10}),
                           None if failed else final))
        n = rng.randrange(steps // 3, steps) if failed else steps
        for step in range(1, n + 1):
            v = final * (1 + 3 * math.exp(-step / 8)) + rng.gauss(0, 0.05 * final)
            metric_rows.append((seq, "intermediate", step, v, json.dumps(v), t_start + step * (t_end - t_start) / steps))
        if not failed:
            metric_rows.append((seq, "final", 0, final, json.dumps({"default": final, "loss": final / 10}), t_end))
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO trials (seq, id, parameters, status, created_at, started_at, ended_at, exit_code, "
                     "message, final, final_value) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", trial_rows)
    conn.executemany("INSERT INTO metrics (trial_seq, kind, step, value, data, ts) VALUES (?, ?, ?, ?, ?, ?)",
                     metric_rows)
    conn.execute("UPDATE experiment SET status='DONE', started_at=?, ended_at=?, run_seconds=?",
                 (start, start + trials * 2.0 + 6, trials * 2.0 + 6))
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    return time.perf_counter() - t0


class Server:
    """The real dashboard app (read-only, as ``hpo view`` serves it) on a thread."""

    def __init__(self, directory: Path) -> None:
        from webui.server import ApiServer, create_app

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


def bench_api(directory: Path, port: int, trials: int, n: int) -> dict[str, Any]:
    rng = random.Random(1)
    writer = ExperimentStore(directory)  # to change the store between requests (defeats the caches)

    def touch() -> None:
        writer.add_event("bench", None, {})

    pages = max(1, trials // 100)
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
        ("trials page (sorted by value desc; store changed before each)",
         lambda i: f"/api/v1/trials?limit=100&offset={rng.randrange(pages) * 100}&sort=value&order=desc", touch),
        ("trials page (sorted by a parameter; store changed before each)",
         lambda i: f"/api/v1/trials?limit=100&offset={rng.randrange(pages // 2) * 100}&sort=param.lr", touch),
        ("one trial (parameters + 50 metrics)", lambda i: f"/api/v1/trials/t{rng.randrange(1, trials + 1):06d}", None),
        ("chart data, all trials (store changed before each)", lambda i: "/api/v1/chart-data", touch),
        ("chart data, all trials (unchanged: cached)", lambda i: "/api/v1/chart-data", None),
        ("curves: best 50 + quartile bands (store changed before each)",
         lambda i: "/api/v1/metrics?top=50&bands=true", touch),
        ("curves: best 20, no bands (store changed)", lambda i: "/api/v1/metrics?top=20", touch),
        ("experiment (overview)", lambda i: "/api/v1/experiment", None),
    ]
    out: dict[str, Any] = {}
    for name, path, before in cases:
        count = n if before is None else max(20, n // 5)
        first, _ = timed_requests(port, path, 3, before)  # warm-up
        ms, size = timed_requests(port, path, count, before)
        out[name] = {**summary(ms), "bytes": size, "first_request_ms": round(first[0], 2)}
        print(f"  {name:62s} median {out[name]['median_ms']:7.2f} ms   p95 {out[name]['p95_ms']:7.2f} ms"
              f"   ({size / 1024:.0f} KiB, n={count}; first {first[0]:.0f} ms)", flush=True)
    # importance is recomputed at most every 5 s; time one computation from a fresh reader
    from webui.queries import Reader
    reader = Reader(directory)
    t = time.perf_counter()
    imp = reader.importance(False)
    out["importance computation (uncached)"] = {"ms": round((time.perf_counter() - t) * 1000, 1), "n": imp["n"],
                                                "method": imp["method"]}
    reader.close()
    print(f"  {'importance computation (uncached, refreshed at most every 5 s)':62s} "
          f"{out['importance computation (uncached)']['ms']:7.1f} ms", flush=True)
    writer.close()
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
            # the other pages, from a warm browser (navigation inside the app)
            for name in ("overview", "charts"):
                t = time.perf_counter()
                page.evaluate(f"location.hash = '#/{name}'")
                deadline = time.monotonic() + 60
                while not page.evaluate(f"window.__hpo.ready.{name}"):
                    if time.monotonic() > deadline:
                        break
                    page.wait_for_timeout(10)
                one[f"{name}_page_ms"] = round((time.perf_counter() - t) * 1000, 1)
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
                  f"RSS {one.get('renderer_rss_after_charts_mb')} MB (USS {one.get('renderer_uss_after_charts_mb')} MB)", flush=True)
            ctx.close()
            shutil.rmtree(profile, ignore_errors=True)
    runs_ = result["runs"]
    result["interactive_ms_median"] = statistics.median(r["interactive_ms"] for r in runs_)
    result["renderer_rss_mb_max"] = max((r.get("renderer_rss_after_charts_mb") or r["renderer_rss_mb"] or 0) for r in runs_)
    result["js_heap_used_mb_max"] = max(r["js_heap_used_after_charts_mb"] for r in runs_)
    result["renderer_uss_mb_max"] = max((r.get("renderer_uss_after_charts_mb") or r["renderer_uss_mb"] or 0) for r in runs_)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=10000)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--requests", type=int, default=200, help="requests per endpoint")
    ap.add_argument("--browser-runs", type=int, default=3)
    ap.add_argument("--no-browser", action="store_true")
    ap.add_argument("--chromium", default=os.environ.get("HPO_CHROMIUM", "/usr/bin/chromium"))
    ap.add_argument("--json", help="write the figures to this file")
    ap.add_argument("--keep", help="build the store in this folder and keep it")
    args = ap.parse_args(argv)

    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="hpo-dashboard-bench-"))
    directory = tmp / "bench0001"
    if directory.exists():
        shutil.rmtree(directory)
    print(f"building a store: {args.trials} trials x {args.steps} intermediate results in {directory}", flush=True)
    seconds = build_store(directory, args.trials, args.steps)
    size = sum(f.stat().st_size for f in directory.iterdir()) / 2**20
    print(f"  built in {seconds:.1f} s ({size:.0f} MiB)", flush=True)
    figures: dict[str, Any] = {"trials": args.trials, "steps": args.steps, "store_mib": round(size, 1),
                               "cpus": os.cpu_count(), "loadavg_before": os.getloadavg()}
    server = Server(directory)
    try:
        print("API latency (sequential requests over one keep-alive connection):", flush=True)
        figures["api"] = bench_api(directory, server.port, args.trials, args.requests)
        if not args.no_browser:
            print(f"headless Chromium ({args.chromium}), {args.browser_runs} cold loads of /#/trials:", flush=True)
            figures["browser"] = bench_browser(server.port, args.chromium, args.browser_runs)
    finally:
        server.close()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    figures["loadavg_after"] = os.getloadavg()
    api = figures["api"]
    worst = max(v["median_ms"] for v in api.values() if "median_ms" in v)
    print("\nsummary:")
    print(f"  API median, worst endpoint: {worst:.1f} ms (target < 50 ms)")
    if "browser" in figures:
        b = figures["browser"]
        print(f"  trials page interactive (median of {len(b['runs'])}): {b['interactive_ms_median']:.0f} ms "
              "(target < 1500 ms)")
        print(f"  page memory: JS heap <= {b['js_heap_used_mb_max']} MB, renderer private memory (USS) <= "
              f"{b['renderer_uss_mb_max']} MB, renderer RSS (with shared libraries) <= {b['renderer_rss_mb_max']} MB "
              "(target < 300 MB)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
