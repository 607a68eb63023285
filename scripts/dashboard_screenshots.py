"""Screenshots of every dashboard page for docs/screenshots/, from a real experiment (real trial processes)
in headless Chromium (Debian's ``chromium``, driven by Playwright).

    python scripts/dashboard_screenshots.py [--out docs/screenshots] [--trials 80]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TRIAL = """
import math, random, sys, time
import hpo
p = hpo.get_next_parameter()
print("training with", p, flush=True)
x, y = p["x"], p["y"]
target = (y - 5.1 / (4 * math.pi ** 2) * x ** 2 + 5 / math.pi * x - 6) ** 2 + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x) + 10
target *= 1 + (0.15 if p["act"] == "sigmoid" else 0) + 0.02 * abs(math.log10(p["lr"]) + 2.5)
for epoch in range(1, 16):
    time.sleep(0.12)
    value = target * (1 + 2.5 * math.exp(-epoch / 4))
    hpo.report_intermediate_result(value)
    print(f"epoch {epoch:2d}  loss {value:9.4f}", flush=True)
if p["depth"] == 7 and random.random() < 0.5:
    print("RuntimeError: CUDA out of memory (simulated)", file=sys.stderr, flush=True)
    sys.exit(1)
hpo.report_final_result({"default": target, "val_loss": target * 1.07})
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    ap.add_argument("--trials", type=int, default=80)
    ap.add_argument("--chromium", default=os.environ.get("HPO_CHROMIUM", "/usr/bin/chromium"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="hpo-shots-"))
    os.environ["HPO_HOME"] = str(tmp / "home")
    code = tmp / "code"
    code.mkdir()
    (code / "train.py").write_text(textwrap.dedent(TRIAL))

    from playwright.sync_api import sync_playwright

    from hpo import Experiment

    def make(name: str, trials: int, tuner: str) -> Experiment:
        exp = Experiment(tuner, "local")
        exp.config.experiment_name = name
        exp.config.tuner.class_args = {"optimize_mode": "minimize"}
        exp.config.search_space = {
            "x": {"_type": "uniform", "_value": [-5, 10]}, "y": {"_type": "uniform", "_value": [0, 15]},
            "lr": {"_type": "loguniform", "_value": [1e-4, 1e-1]},
            "act": {"_type": "choice", "_value": ["relu", "tanh", "sigmoid"]},
            "depth": {"_type": "randint", "_value": [2, 8]}}
        exp.config.trial_command = f"{sys.executable} train.py"
        exp.config.trial_code_directory = code
        exp.config.trial_concurrency = 4
        exp.config.max_trial_number = trials
        exp.config.max_experiment_duration = "2h"
        return exp

    baseline = make("branin-random-baseline", 24, "random")
    baseline.run(port=0)
    exp = make("branin-tpe", args.trials, "tpe")
    exp.start(port=0)
    url = f"http://localhost:{exp.port}/"
    chromium_args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--no-first-run", "--disable-quic", "--disable-dev-shm-usage"]
    try:
        while len(exp.list_trial_jobs()) < int(args.trials * 0.8):
            time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=chromium_args, headless=True)
            page = browser.new_page(viewport={"width": 1440, "height": 900})

            def ready(name: str) -> None:
                deadline = time.monotonic() + 30
                while not page.evaluate(f"window.__hpo && window.__hpo.ready.{name}"):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{name} did not load")
                    page.wait_for_timeout(50)
                page.wait_for_timeout(600)

            page.goto(url + "#/overview")
            ready("overview")
            deadline = time.monotonic() + 30  # parameter importance (a forest is fitted) comes last
            while "computing…" in page.inner_text("body") and time.monotonic() < deadline:
                page.wait_for_timeout(100)
            page.wait_for_timeout(400)
            page.screenshot(path=str(out / "overview.png"), full_page=True)
            page.evaluate("location.hash = '#/trials?sort=value'")
            ready("trials")
            page.locator(".vt-row[data-id] input[type=checkbox]").nth(0).check()
            page.locator(".vt-row[data-id] input[type=checkbox]").nth(1).check()
            page.locator(".vt-row[data-id] input[type=checkbox]").nth(2).check()
            page.click("[data-testid=compare-button]")
            page.locator("[data-testid=compare-chart] canvas").wait_for()
            page.wait_for_timeout(600)
            page.screenshot(path=str(out / "trials.png"))
            running = exp.list_trial_jobs(status="RUNNING")
            target = running[0]["id"] if running else exp.list_trial_jobs()[-1]["id"]
            page.evaluate(f"location.hash = '#/trial/{target}'")
            ready("trial")
            page.wait_for_timeout(1200)
            page.screenshot(path=str(out / "trial.png"), full_page=True)
            page.evaluate("location.hash = '#/charts'")
            ready("charts")
            page.wait_for_timeout(800)
            page.screenshot(path=str(out / "charts.png"), full_page=True)
            page.evaluate("location.hash = '#/experiments'")
            ready("experiments")
            page.screenshot(path=str(out / "experiments.png"))
            page.evaluate(f"location.hash = '#/x/{baseline.id}/overview'")
            page.wait_for_timeout(300)
            ready("overview")
            page.screenshot(path=str(out / "read-only.png"))
            browser.close()
    finally:
        exp.stop()
    for f in sorted(out.glob("*.png")):
        print(f, f.stat().st_size // 1024, "KiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
