"""NNI 3.0 half of the orchestration-throughput benchmark.

Runs a real NNI 3.0 experiment (Python API, ``Random`` tuner, ``local``
training service) whose trials do no work (``benchmarks/nni_trial.py``: get
the parameters, report ``x * 1000 + y``), so that what is measured is NNI's
own orchestration overhead.

Setup and usage (from the repository root)::

    bash benchmarks/setup_nni.sh          # venv at benchmarks/.venv-nni
    benchmarks/.venv-nni/bin/python benchmarks/nni_side.py \\
        --trials 200 --concurrency 2 --port 8123 [--workdir DIR] [--keep]

It must run with the NNI venv's python (the trials are launched with the same
interpreter, ``sys.executable``). Only stdlib, nni and psutil are used.

Measurements
------------
``seconds``
    Wall time from calling ``experiment.start()`` until the driver, polling
    ``get_job_statistics()`` every ``--poll`` seconds, sees all ``--trials``
    trials in a final state.
``trials_per_s``
    ``completed / seconds``.
``time_to_first_trial_s``
    From the ``start()`` call until the earliest trial ``startTime`` reported
    by NNI (``first_trial_source = "nni_trial_startTime"``); if NNI gives no
    timestamps, until the driver first sees a trial in the statistics
    (``first_trial_source = "poll_first_seen"``).
``peak_rss_mb``
    Peak summed RSS of NNI's engine: the manager (the ``node`` binary bundled
    in the nni wheel) plus the tuner/dispatcher process it starts
    (``python -m nni --exp_params ...``), sampled every 0.1 s with psutil;
    trial processes are excluded. ``null`` if psutil is missing.
``pairing_mismatches`` / ``pairing_checked``
    After the run, every record of ``experiment.export_data()`` with a value
    is checked: the objective recomputed from the record's parameters must
    equal the recorded value. NNI 3.0 is known to mis-pair parameters and
    results (microsoft/nni#5726), so mismatches > 0 is a finding about NNI,
    not a bug here. Details go to stderr, together with a cross-check
    against what each trial itself says it received (the trial appends one
    JSON line to ``$HPO_BENCH_TRIAL_LOG``, set by this driver): this tells
    whether the trial was handed another trial's parameters or NNI stored
    the result against the wrong parameters.

Side effects are confined to the work directory (a fresh temp dir unless
``--workdir`` is given; removed at the end unless ``--keep`` or ``--workdir``):
the experiment working directory is ``<workdir>/nni-experiments`` and ``HOME``
is pointed at ``<workdir>/home`` for NNI and its children, because both the
Python side and the node manager otherwise write the experiment registry
``~/nni-experiments/.experiment``.

Output: logs on stderr; exactly one JSON object on the last line of stdout
with keys ``system, trials, concurrency, completed, seconds, trials_per_s,
time_to_first_trial_s, first_trial_source, peak_rss_mb, pairing_mismatches,
pairing_checked``. Exit status: 0 all trials finished; 1 not all finished
(timeout / experiment ERROR; the JSON line is still printed); 2 port busy;
130 interrupted (SIGINT/SIGTERM: NNI is stopped, nothing printed on stdout).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TRIAL_SCRIPT = "nni_trial.py"
FINAL_STATES = {"SUCCEEDED", "FAILED", "USER_CANCELED", "SYS_CANCELED", "EARLY_STOPPED"}
SEARCH_SPACE = {
    "x": {"_type": "uniform", "_value": [0.0, 1.0]},
    "y": {"_type": "choice", "_value": [1, 2, 3, 4, 5]},
}


def log(*parts: object) -> None:
    print("[nni_side]", *parts, file=sys.stderr, flush=True)


def objective(params: dict) -> float:
    # Must match benchmarks/nni_trial.py.
    return float(params["x"]) * 1000.0 + float(params["y"])


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--port", type=int, default=8123)
    p.add_argument("--workdir", default=None,
                   help="directory for NNI's experiment files (default: fresh temp dir, removed afterwards)")
    p.add_argument("--keep", action="store_true", help="keep the temp work directory")
    p.add_argument("--seed", type=int, default=0, help="Random tuner seed")
    p.add_argument("--poll", type=float, default=0.25, help="status poll interval, seconds")
    p.add_argument("--timeout", type=float, default=1800.0,
                   help="give up after this many seconds (default 1800)")
    return p.parse_args()


# --------------------------------------------------------------------------- RSS sampling

class RssSampler(threading.Thread):
    """Samples the RSS of NNI's engine: the node manager plus the tuner.

    Counted: the ``node`` manager process and its descendants that belong to
    the tuner/dispatcher (``python -m nni --exp_params ...`` and its ``sh``
    wrapper). Trial processes (also children of node) are not counted; neither
    is a freshly forked child that has not exec'd yet (its cmdline is still
    node's and psutil would report node's shared pages as its RSS).
    """

    def __init__(self, root_pid: int, interval: float = 0.1):
        super().__init__(daemon=True)
        self.root_pid = root_pid
        self.interval = interval
        self.peak_bytes = 0
        self.peak_parts: dict[str, int] = {}
        self._stop_evt = threading.Event()

    def sample(self) -> None:
        import psutil
        try:
            root = psutil.Process(self.root_pid)
            parts = {"node": root.memory_info().rss, "tuner": 0}
            for child in root.children(recursive=True):
                try:
                    if "--exp_params" in " ".join(child.cmdline()):
                        parts["tuner"] += child.memory_info().rss
                except psutil.Error:
                    continue
        except psutil.Error:
            return
        total = sum(parts.values())
        if total > self.peak_bytes:
            self.peak_bytes = total
            self.peak_parts = parts

    def run(self) -> None:
        while not self._stop_evt.is_set():
            self.sample()
            self._stop_evt.wait(self.interval)

    def stop(self) -> None:
        self._stop_evt.set()


# --------------------------------------------------------------------------- process cleanup

def nni_descendants(root_pid: int) -> list:
    try:
        import psutil
        return psutil.Process(root_pid).children(recursive=True)
    except Exception:
        return []


def kill_leftovers(procs: list) -> int:
    """Kill any process of ``procs`` still alive; return how many there were."""
    try:
        import psutil
    except ImportError:
        return 0
    alive = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.Error:
            pass
    for p in alive:
        log(f"killing leftover NNI process {p.pid}: {' '.join(p.cmdline())[:200]}")
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, still = psutil.wait_procs(alive, timeout=5)
    for p in still:
        try:
            p.kill()
        except psutil.Error:
            pass
    return len(alive)


# --------------------------------------------------------------------------- pairing check

def record_value(value):
    """export_data values are JSON-decoded once; NNI may leave them double-encoded."""
    for _ in range(3):
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                return None
        else:
            break
    if isinstance(value, dict):
        value = value.get("default")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def pairing_check(records: list, trial_log: str | None) -> tuple[int, int]:
    checked = 0
    mismatches = 0
    examples = []
    for rec in records:
        value = record_value(rec.value)
        params = rec.parameter
        if value is None or not isinstance(params, dict) or "x" not in params:
            continue
        checked += 1
        expected = objective(params)
        if not math.isclose(expected, value, rel_tol=1e-9, abs_tol=1e-9):
            mismatches += 1
            if len(examples) < 5:
                examples.append((rec.trialJobId, params, value, expected))
    log(f"pairing check: {checked} records checked, {mismatches} mismatches")
    for tid, params, value, expected in examples:
        log(f"  mismatch trial={tid} params={params} recorded={value} recomputed={expected}")

    # Extra diagnostics: what each trial itself says it received/reported.
    if trial_log and os.path.exists(trial_log):
        by_id = {}
        with open(trial_log, encoding="utf-8") as f:
            for line in f:
                try:
                    r = json.loads(line)
                except ValueError:
                    continue
                by_id[r["trial_job_id"]] = r
        same_params = diff_params = missing = 0
        for rec in records:
            own = by_id.get(rec.trialJobId)
            if own is None:
                missing += 1
            elif own["parameters"] == rec.parameter:
                same_params += 1
            else:
                diff_params += 1
        log(f"trial self-reports: {len(by_id)}; export_data parameters equal to what the trial "
            f"received: {same_params}, different: {diff_params}, no self-report: {missing}")
    return mismatches, checked


# --------------------------------------------------------------------------- main

def main() -> int:
    args = parse_args()

    # Keep stdout clean for the final JSON line: NNI logs to sys.stdout and the
    # node manager inherits fd 1, so point fd 1 at stderr and keep a private
    # handle on the real stdout.
    real_stdout = os.fdopen(os.dup(1), "w")
    sys.stdout.flush()
    os.dup2(2, 1)

    if port_in_use(args.port):
        log(f"port {args.port} is already in use; pick another --port")
        return 2
    # Let SIGTERM unwind through the finally-block below (stop NNI, clean up).
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)

    owns_workdir = args.workdir is None
    workdir = os.path.abspath(args.workdir or tempfile.mkdtemp(prefix="nni-bench-"))
    os.makedirs(workdir, exist_ok=True)
    home = os.path.join(workdir, "home")
    exp_dir = os.path.join(workdir, "nni-experiments")
    os.makedirs(home, exist_ok=True)
    os.makedirs(exp_dir, exist_ok=True)
    trial_log = os.path.join(workdir, "trial_self_reports.jsonl")
    if os.path.exists(trial_log):
        os.remove(trial_log)
    # Must happen before nni is imported: nnictl's registry path is computed at import time.
    os.environ["HOME"] = home
    os.environ["HPO_BENCH_TRIAL_LOG"] = trial_log
    log(f"workdir={workdir}")

    import nni
    from nni.experiment import Experiment
    try:
        import psutil  # noqa: F401
        have_psutil = True
    except ImportError:
        have_psutil = False
    log(f"nni {nni.__version__}, python {sys.version.split()[0]}, psutil={'yes' if have_psutil else 'no'}")

    exp = Experiment("local")
    cfg = exp.config
    cfg.experiment_name = "hpo-bench-nni"
    cfg.experiment_working_directory = exp_dir
    cfg.trial_code_directory = HERE
    cfg.trial_command = f"{shlex.quote(sys.executable)} {TRIAL_SCRIPT}"
    cfg.search_space = SEARCH_SPACE
    cfg.tuner.name = "Random"
    cfg.tuner.class_args = {"optimize_mode": "maximize", "seed": args.seed}
    cfg.max_trial_number = args.trials
    cfg.trial_concurrency = args.concurrency
    cfg.training_service.use_active_gpu = False

    sampler = None
    first_seen_poll = None
    completed = 0
    finished_all = False
    status = None
    known_procs: list = []
    t_start_call = time.time()
    t0 = time.perf_counter()
    t_done = None
    try:
        exp.start(args.port)
        t_started = time.perf_counter()
        log(f"experiment {exp.id} started; start() took {t_started - t0:.2f}s")
        manager_pid = exp._proc.pid if exp._proc is not None else None  # the node process
        if have_psutil and manager_pid:
            sampler = RssSampler(manager_pid)
            sampler.start()

        deadline = t0 + args.timeout
        last_status_check = 0.0
        last_progress = -1
        while True:
            now = time.perf_counter()
            stats = exp.get_job_statistics() or []
            counts = {s["trialJobStatus"]: int(s["trialJobNumber"]) for s in stats}
            total_seen = sum(counts.values())
            if first_seen_poll is None and total_seen > 0:
                first_seen_poll = now - t0
            completed = sum(n for st, n in counts.items() if st in FINAL_STATES)
            if completed >= args.trials:
                t_done = now
                finished_all = True
                break
            if completed // 25 != last_progress:
                last_progress = completed // 25
                log(f"{now - t0:7.1f}s  {counts}")
            if now - last_status_check > 2.0:
                last_status_check = now
                status = exp.get_status()
                if status in ("ERROR", "STOPPED"):
                    log(f"experiment status {status}; giving up")
                    t_done = now
                    break
            if now > deadline:
                log(f"timeout after {args.timeout}s; giving up")
                t_done = now
                break
            if have_psutil and manager_pid:
                try:
                    known_procs = [psutil.Process(manager_pid)] + nni_descendants(manager_pid)
                except psutil.Error:
                    pass
            time.sleep(args.poll)

        seconds = (t_done if t_done is not None else time.perf_counter()) - t0
        log(f"{completed}/{args.trials} trials final after {seconds:.2f}s; status={exp.get_status()}")

        # Time to first trial from NNI's own trial timestamps (ms since epoch).
        jobs = exp.list_trial_jobs()
        starts = [j.startTime for j in jobs if isinstance(j.startTime, (int, float)) and j.startTime > 0]
        ends = [j.endTime for j in jobs if isinstance(j.endTime, (int, float)) and j.endTime > 0]
        succeeded = sum(1 for j in jobs if j.status == "SUCCEEDED")
        if starts:
            ttft = min(starts) / 1000.0 - t_start_call
            first_source = "nni_trial_startTime"
        else:
            ttft = first_seen_poll
            first_source = "poll_first_seen"
        if ends:
            log(f"(by NNI timestamps: last trial endTime at {max(ends) / 1000.0 - t_start_call:.2f}s "
                f"after start(); {succeeded} SUCCEEDED)")

        records = exp.export_data()
        mismatches, checked = pairing_check(records, trial_log)
    finally:
        if sampler is not None:
            sampler.sample()
            sampler.stop()
            log("peak RSS MB by part: " + ", ".join(
                f"{k}={v / 2**20:.1f}" for k, v in sampler.peak_parts.items()))
        if have_psutil and exp._proc is not None:
            try:
                known_procs = [psutil.Process(exp._proc.pid)] + nni_descendants(exp._proc.pid)
            except Exception:
                pass
        t_stop = time.perf_counter()
        try:
            exp.stop()
        except Exception as e:  # stop() itself falls back to killing on REST failure
            log(f"experiment.stop() raised {e!r}")
        log(f"experiment.stop() took {time.perf_counter() - t_stop:.2f}s")
        n_left = kill_leftovers(known_procs)
        log(f"leftover NNI processes after stop(): {n_left}; "
            f"port {args.port} {'STILL IN USE' if port_in_use(args.port) else 'free'}")
        if owns_workdir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        elif args.keep or not owns_workdir:
            log(f"kept {workdir}")

    result = {
        "system": "nni-3.0",
        "trials": args.trials,
        "concurrency": args.concurrency,
        "completed": completed,
        "seconds": round(seconds, 3),
        "trials_per_s": round(completed / seconds, 4) if seconds > 0 else None,
        "time_to_first_trial_s": round(ttft, 3) if ttft is not None else None,
        "first_trial_source": first_source if ttft is not None else None,
        "peak_rss_mb": round(sampler.peak_bytes / 2**20, 1) if sampler and sampler.peak_bytes else None,
        "pairing_mismatches": mismatches,
        "pairing_checked": checked,
    }
    real_stdout.write(json.dumps(result) + "\n")
    real_stdout.flush()
    return 0 if finished_all else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as exc:
        log(f"interrupted ({exc}); NNI was stopped, no result")
        sys.exit(130)
