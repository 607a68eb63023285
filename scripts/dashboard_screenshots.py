"""Screenshots of every dashboard page for docs/screenshots/, from a real experiment (real trial processes)
in headless Chromium (Debian's ``chromium``, driven by Playwright).

    python scripts/dashboard_screenshots.py [--out docs/screenshots] [--trials 80]
    python scripts/dashboard_screenshots.py --first-hour after   # docs/screenshots/first-hour/after-*.png

``--first-hour NAME`` shoots what a new user sees at 1280x800 instead: a finished six-parameter experiment
(with failed, early-stopped and result-less trials) read-only, one whose command is broken (ERROR), and
the experiments list (tuner named three ways, a maximum lowered below the trials already run).
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

# six parameters; sgd with a large learning rate diverges (FAILED), one trial in ten forgets its result
TRIAL_SIX = """
import math, random, sys, time
import hpo
p = hpo.get_next_parameter()
print("training with", p, flush=True)
lr, layers = p["learning_rate"], p["num_layers"]
loss = (0.25 + 0.4 * abs(math.log10(lr) + 2.5) + 0.03 * abs(layers - 3) + 0.6 * (p["dropout"] - 0.2) ** 2
        + (0.08 if p["optimizer"] == "sgd" else 0) + 0.02 * math.log2(p["batch_size"] / 32) ** 2
        + 2e3 * p["weight_decay"] ** 2)
if p["optimizer"] == "sgd" and lr > 0.02:
    print("Traceback (most recent call last):", file=sys.stderr)
    print('  File "train.py", line 41, in <module>', file=sys.stderr)
    print("RuntimeError: loss is NaN after 3 epochs (diverged)", file=sys.stderr, flush=True)
    sys.exit(1)
if hpo.get_sequence_id() % 10 == 7:
    sys.exit(0)
for epoch in range(1, 13):
    time.sleep(0.06)
    value = loss * (1 + 2 * math.exp(-epoch / 3))
    hpo.report_intermediate_result(value)
    print(f"epoch {epoch:2d}  val_loss {value:.4f}", flush=True)
hpo.report_final_result(loss)
"""
SIX_SPACE = {
    "learning_rate": {"_type": "loguniform", "_value": [1e-4, 1e-1]},
    "batch_size": {"_type": "choice", "_value": [16, 32, 64, 128]},
    "dropout": {"_type": "uniform", "_value": [0, 0.5]},
    "optimizer": {"_type": "choice", "_value": ["adam", "sgd", "rmsprop"]},
    "num_layers": {"_type": "randint", "_value": [1, 7]},
    "weight_decay": {"_type": "loguniform", "_value": [1e-6, 1e-2]},
}


CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic", "--disable-dev-shm-usage"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="default: docs/screenshots (docs/screenshots/first-hour)")
    ap.add_argument("--trials", type=int, default=80)
    ap.add_argument("--first-hour", metavar="NAME", help="shoot the first-hour pages at 1280x800 as NAME-*.png")
    ap.add_argument("--chromium", default=os.environ.get("HPO_CHROMIUM", "/usr/bin/chromium"))
    args = ap.parse_args()
    shots = ROOT / "docs" / "screenshots"
    out = Path(args.out) if args.out else shots / "first-hour" if args.first_hour else shots
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="hpo-shots-"))
    os.environ["HPO_HOME"] = str(tmp / "home")
    code = tmp / "code"
    code.mkdir()
    (code / "train.py").write_text(textwrap.dedent(TRIAL))
    (code / "train6.py").write_text(textwrap.dedent(TRIAL_SIX))
    if args.first_hour:
        first_hour(args, out, code)
    else:
        readme(args, out, code)
    for f in sorted(out.glob("*.png")):
        print(f, f.stat().st_size // 1024, "KiB")
    return 0


class Browser:
    """One headless Chromium page; ``ready(name)`` waits until the page says it has loaded."""

    def __init__(self, chromium: str, width: int, height: int) -> None:
        from playwright.sync_api import sync_playwright
        self._pw = sync_playwright().start()
        self._browser = self._pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        self.page = self._browser.new_page(viewport={"width": width, "height": height})
        self.page.on("pageerror", lambda e: print("page error:", e, file=sys.stderr))
        self.page.on("console", lambda m: print("console:", m.text, file=sys.stderr) if m.type == "error" else None)

    def ready(self, name: str) -> None:
        deadline = time.monotonic() + 30
        while not self.page.evaluate(f"window.__hpo && window.__hpo.ready.{name}"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not load")
            self.page.wait_for_timeout(50)
        self.page.wait_for_timeout(600)

    def overview(self, hash_: str) -> None:
        """Open an overview and wait for its parameter importance (which comes last)."""
        self.page.evaluate(f"location.hash = {hash_!r}")
        self.page.wait_for_timeout(300)
        self.ready("overview")
        deadline = time.monotonic() + 30
        while "computing…" in self.page.inner_text("body") and time.monotonic() < deadline:
            self.page.wait_for_timeout(100)
        self.page.wait_for_timeout(400)

    def close(self) -> None:
        self._browser.close()
        self._pw.stop()


def experiment(name: str, tuner: object, code: Path, command: str, space: dict, trials: int, concurrency: int) -> object:
    from hpo import Experiment

    exp = Experiment(tuner, "local")
    exp.config.experiment_name = name
    if isinstance(tuner, str):
        exp.config.tuner.class_args = {"optimize_mode": "minimize"}
    exp.config.search_space = space
    exp.config.trial_command = command
    exp.config.trial_code_directory = code
    exp.config.trial_concurrency = concurrency
    exp.config.max_trial_number = trials
    exp.config.max_experiment_duration = "2h"
    return exp


def readme(args: argparse.Namespace, out: Path, code: Path) -> None:
    space = {
        "x": {"_type": "uniform", "_value": [-5, 10]}, "y": {"_type": "uniform", "_value": [0, 15]},
        "lr": {"_type": "loguniform", "_value": [1e-4, 1e-1]},
        "act": {"_type": "choice", "_value": ["relu", "tanh", "sigmoid"]},
        "depth": {"_type": "randint", "_value": [2, 8]}}
    command = f"{sys.executable} train.py"
    baseline = experiment("branin-random-baseline", "random", code, command, space, 24, 4)
    baseline.run(port=0)
    exp = experiment("branin-tpe", "tpe", code, command, space, args.trials, 4)
    exp.start(port=0)
    url = f"http://localhost:{exp.port}/"
    try:
        while len(exp.list_trial_jobs()) < int(args.trials * 0.8):
            time.sleep(0.5)
        b = Browser(args.chromium, 1440, 900)
        page = b.page
        page.goto(url + "#/overview")
        b.overview("#/overview")
        page.screenshot(path=str(out / "overview.png"), full_page=True)
        page.evaluate("location.hash = '#/trials?sort=value'")
        b.ready("trials")
        for k in range(3):
            page.locator(".vt-row[data-id] input[type=checkbox]").nth(k).check()
        page.click("[data-testid=compare-button]")
        page.locator("[data-testid=compare-chart] canvas").wait_for()
        page.wait_for_timeout(600)
        page.screenshot(path=str(out / "trials.png"))
        running = exp.list_trial_jobs(status="RUNNING")
        target = running[0]["id"] if running else exp.list_trial_jobs()[-1]["id"]
        page.evaluate(f"location.hash = '#/trial/{target}'")
        b.ready("trial")
        page.wait_for_timeout(1200)
        page.screenshot(path=str(out / "trial.png"), full_page=True)
        page.evaluate("location.hash = '#/charts'")
        b.ready("charts")
        page.wait_for_timeout(800)
        page.screenshot(path=str(out / "charts.png"), full_page=True)
        page.evaluate("location.hash = '#/experiments'")
        b.ready("experiments")
        page.screenshot(path=str(out / "experiments.png"))
        b.overview(f"#/x/{baseline.id}/overview")
        page.screenshot(path=str(out / "read-only.png"))
        b.close()
    finally:
        exp.stop()


def first_hour(args: argparse.Namespace, out: Path, code: Path) -> None:
    from hpo import Experiment
    from tuners.tpe import TpeTuner

    py = sys.executable
    broken = experiment("broken-command", "tpe", code, f"{py} -c 'import torchvision'", SIX_SPACE, 20, 2)
    broken.run(port=0)
    lowered = experiment("lowered-max", TpeTuner(optimize_mode="minimize"), code, f"{py} train6.py", SIX_SPACE, 40, 4)
    lowered.start(port=0)
    while sum(t["status"] not in ("WAITING", "RUNNING") for t in lowered.list_trial_jobs()) < 12:
        time.sleep(0.2)
    lowered.update_max_trial_number(5)
    lowered.wait()
    six = experiment("six-parameters", "TPE", code, f"{py} train6.py", SIX_SPACE, 40, 4)
    six.config.assessor = {"name": "Medianstop", "class_args": {"optimize_mode": "minimize", "start_step": 4}}
    six.run(port=0)
    view = Experiment.view(six.id, port=0, non_blocking=True)
    try:
        b = Browser(args.chromium, 1280, 800)
        page = b.page
        page.goto(f"http://localhost:{view.port}/#/overview")
        b.overview("#/overview")
        page.screenshot(path=str(out / f"{args.first_hour}-overview.png"))
        page.evaluate("location.hash = '#/trials'")
        b.ready("trials")
        page.screenshot(path=str(out / f"{args.first_hour}-trials.png"))
        page.evaluate("location.hash = '#/experiments'")
        b.ready("experiments")
        page.screenshot(path=str(out / f"{args.first_hour}-experiments.png"))
        b.overview(f"#/x/{broken.id}/overview")
        page.screenshot(path=str(out / f"{args.first_hour}-error-overview.png"))
        b.close()
    finally:
        view.stop()


if __name__ == "__main__":
    raise SystemExit(main())
