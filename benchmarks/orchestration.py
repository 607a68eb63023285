"""Orchestration throughput: 200 zero-work trials through hpo and, side by side, NNI 3.0.

Usage (from the repository root)::

    bash benchmarks/setup_nni.sh                     # once: NNI 3.0 in benchmarks/.venv-nni
    python benchmarks/orchestration.py [--trials 200] [--concurrency 2] [--repeat 3] [--no-nni]
    python benchmarks/orchestration.py --rss-trials 10000   # engine RSS with 10,000 finished trials
    python benchmarks/orchestration.py --no-nni --remote    # also through the remote service (sshd on loopback)
    python benchmarks/orchestration.py --no-nni --kubernetes --concurrency 4   # also as Jobs on the fake cluster
    python benchmarks/orchestration.py --warm [--remote] [--trials 200] [--repeat 3]  # warm vs cold vs Optuna (warm_start.py)
    python benchmarks/orchestration.py --gang 4 [--remote] [--warm]  # a gang's start against one process's (gang_start.py)

Each system runs in its own child process (so RSS is the engine's alone), with trials started by
an absolute interpreter path (``python3`` on PATH may be a slow pyenv shim).  Reported: trials/s
(median of ``--repeat`` runs for hpo), the hpo/NNI ratio, time from ``start()`` to the first trial
process, engine peak RSS, and the pairing check (results recomputed from exported parameters).

``--remote`` also runs the same trials through the remote training service: a real OpenSSH server
(``tests/sshd.py``: Debian's sshd on 127.0.0.1, key-only, as a child process) and asyncssh, so the
numbers include SSH, SFTP upload of the code and the remote agent; reported as trials/s against local.

``--kubernetes`` also runs them through the Kubernetes service against the fake cluster of ``tests/fake_k8s``
(its API server and process kubelet in a separate process, so the engine's CPU is the engine's alone): trials/s
and engine CPU per trial against local, and API requests per trial (counted by the service's client).  Engine CPU
is the engine process's (trials and the fake cluster run in other processes), counted from the end of ``start()``
(a one-time cost: for Kubernetes, importing kubernetes_asyncio, about 1 s) to the end of the experiment, less the
CPU of this benchmark's RSS sampler thread (its cost grows with wall time, and Kubernetes trials take longer);
local and Kubernetes runs alternate, so that a load from other processes falls on both alike.
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# benchmarks/tuners.py is named like the `tuners` package: this folder must not shadow the repository root
sys.path[:] = [p for p in sys.path if p not in (str(HERE), "")]
sys.path.insert(0, str(ROOT))
NNI_PYTHON = HERE / ".venv-nni" / "bin" / "python"
SPACE = {"x": {"_type": "uniform", "_value": [0, 1]}, "y": {"_type": "choice", "_value": [1, 2, 3, 4, 5]}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PeakRss:
    """Samples this process's RSS every 20 ms (``cpu()``: the CPU seconds the sampling has cost so far)."""

    def __init__(self) -> None:
        import psutil
        self.proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self._clock: int | None = None

    def cpu(self) -> float:
        """The sampler thread's CPU time (s): benchmark instrumentation, not the engine's."""
        return time.clock_gettime(self._clock) if self._clock is not None else 0.0

    def _run(self) -> None:
        self._clock = time.pthread_getcpuclockid(threading.get_ident())
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self._stop.wait(0.02)

    def __enter__(self) -> "PeakRss":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def _loopback_machine(home: Path) -> tuple[dict, dict]:
    """Start an sshd on 127.0.0.1 for the current user: (machine_list entry, other remote options)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from sshd import SshServer, client_key, unavailable, world_dir

    if unavailable():
        sys.exit(f"--remote: {unavailable()}")
    base = world_dir("hpo-bench-sshd-")
    key = client_key(base, "client_key")
    server = SshServer(base / "server", [key.with_suffix(".pub")]).start()
    atexit.register(lambda: (server.stop(), shutil.rmtree(base, ignore_errors=True)))
    known = base / "known_hosts"
    known.write_text(server.known_hosts_line())
    return (server.machine(key, python_path=sys.executable),
            {"known_hosts_file": str(known), "remote_directory": str(home / "remote-host")})


def hpo_side(trials: int, concurrency: int, home: Path, remote: bool = False, kubeconfig: str | None = None) -> dict:
    """Runs in a child process: one hpo experiment; prints a JSON line."""
    import psutil
    os.environ["HPO_HOME"] = str(home)
    if remote:
        machine, options = _loopback_machine(home)
    platform = "remote" if remote else "kubernetes" if kubeconfig else "local"
    with PeakRss() as rss:
        from hpo import Experiment
        from tuners import RandomTuner

        exp = Experiment(RandomTuner(seed=0), platform)
        if remote:
            exp.config.training_service.machine_list = [machine]
            for key, value in options.items():
                setattr(exp.config.training_service, key, value)
        if kubeconfig:
            ts = exp.config.training_service
            ts.kubeconfig, ts.namespace, ts.python, ts.kill_grace = kubeconfig, home.name.lower(), sys.executable, 1.0
        exp.config.trial_concurrency = concurrency
        exp.config.max_trial_number = trials
        exp.config.search_space = SPACE
        exp.config.trial_command = f"{sys.executable} hpo_trial.py"
        exp.config.trial_code_directory = HERE
        t0 = time.time()
        exp.start(free_port())
        # engine CPU: this process's, from the end of start() (for Kubernetes: importing its client, ~1 s once)
        # to the end, less the RSS sampler's (it costs per second, and a slower platform runs more seconds)
        cpu0, sampler0 = psutil.Process().cpu_times(), rss.cpu()
        exp.wait()
        seconds, cpu1, sampler1 = time.time() - t0, psutil.Process().cpu_times(), rss.cpu()
        first = min(t["started_at"] for t in exp.list_trial_jobs() if t["started_at"])
        data = exp.export_data()
        client = getattr(exp._runner.engine.service, "client", None)  # the Kubernetes service's request counter
        requests = sum(client.requests.values()) if client is not None else None
        exp.stop()
    mismatches = sum(1 for d in data if abs(d["parameter"]["x"] * 1000 + d["parameter"]["y"] - d["default"]) > 1e-6)
    completed = exp.get_job_statistics()["SUCCEEDED"]
    engine_cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system) - (sampler1 - sampler0)
    return {"system": f"hpo-{platform}", "trials": trials, "concurrency": concurrency,
            "engine_cpu_ms_per_trial": round(engine_cpu * 1000 / max(1, completed), 2),
            "sampler_cpu_ms_per_trial": round((sampler1 - sampler0) * 1000 / max(1, completed), 2),
            "api_requests_per_trial": round(requests / max(1, completed), 2) if requests is not None else None,
            "completed": completed, "seconds": round(seconds, 3), "trials_per_s": round(completed / seconds, 3),
            "time_to_first_trial_s": round(first - t0, 4), "peak_rss_mb": round(rss.peak / 2**20, 1),
            "pairing_mismatches": mismatches, "pairing_checked": len(data)}


def rss_side(finished: int, extra: int, home: Path) -> dict:
    """Runs in a child process: an experiment with ``finished`` trials in its store, resumed for ``extra`` more."""
    import random

    os.environ["HPO_HOME"] = str(home)
    from hpo import Experiment
    from hpo.config import ExperimentConfig
    from hpo.registry import register
    from hpo.storage import ExperimentStore

    cfg = ExperimentConfig(search_space=SPACE, trial_command=f"{sys.executable} hpo_trial.py",
                           trial_code_directory=HERE, trial_concurrency=2, max_trial_number=finished + extra)
    cfg.tuner.name = "random"
    directory = home / "rssbench"
    store = ExperimentStore(directory)
    store.create_experiment("rssbench", "rss", cfg.to_dict())
    rng = random.Random(0)
    for seq in range(1, finished + 1):
        params = {"x": rng.random(), "y": rng.randint(1, 5)}
        store.add_trial(seq, f"t{seq:05d}", params)
        store.trial_started(seq, None, None)
        for step in range(1, 11):
            store.add_metric(seq, "intermediate", step, params["x"] * step, params["x"] * step)
        value = params["x"] * 1000 + params["y"]
        store.add_metric(seq, "final", 0, value, value)
        store.trial_ended(seq, "SUCCEEDED", 0)
    store.set_status("STOPPED")
    store.close()
    register("rssbench", "rss", directory)
    with PeakRss() as rss:
        t0 = time.time()
        exp = Experiment.resume("rssbench", port=free_port(), wait_completion=False)
        exp.wait()
        seconds = time.time() - t0
        exp.stop()
    return {"system": "hpo", "finished_in_store": finished, "extra_trials": extra,
            "completed": exp.get_job_statistics()["SUCCEEDED"], "seconds": round(seconds, 2),
            "peak_rss_mb": round(rss.peak / 2**20, 1)}


class fake_cluster:
    """``with fake_cluster(tmp) as kubeconfig``: the fake Kubernetes cluster as a separate process."""

    def __init__(self, tmp: Path) -> None:
        self.kubeconfig = tmp / "fake-kubeconfig.yaml"

    def __enter__(self) -> str:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.fake_k8s", "--kubeconfig", str(self.kubeconfig),
                                      "--capacity", "cpu=64,memory=256Gi"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        if not self.proc.stdout.readline().startswith("http"):  # type: ignore[union-attr]  # its URL: it serves
            sys.exit("--kubernetes: the fake cluster did not start (python -m tests.fake_k8s)")
        return str(self.kubeconfig)

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def run_child(cmd: list[str], timeout: float) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"{cmd[:3]} printed no result (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="hpo runs (the median is reported)")
    ap.add_argument("--no-nni", action="store_true", help="skip the NNI side")
    ap.add_argument("--rss-trials", type=int, default=0, help="also measure RSS with this many finished trials")
    ap.add_argument("--remote", action="store_true",
                    help="also run the trials through the remote service (sshd on loopback) and compare with local")
    ap.add_argument("--kubernetes", action="store_true",
                    help="also run the trials as Jobs on the fake cluster (tests/fake_k8s) and compare with local")
    ap.add_argument("--gang", type=int, default=0, metavar="N",
                    help="only: distributed-trial start, a gang of N processes against one (benchmarks/gang_start.py); "
                         "with --remote also over SSH; --trials per round (default here 20)")
    ap.add_argument("--warm", action="store_true",
                    help="warm vs cold trial starts, Optuna in-process, scikit-learn trials, utilisation at 16 slots")
    ap.add_argument("--side", choices=["hpo", "rss"], help=argparse.SUPPRESS)
    ap.add_argument("--home", help=argparse.SUPPRESS)
    ap.add_argument("--kubeconfig", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.side == "hpo":
        print(json.dumps(hpo_side(args.trials, args.concurrency, Path(args.home), args.remote, args.kubeconfig)))
        return
    if args.side == "rss":
        print(json.dumps(rss_side(args.rss_trials, 50, Path(args.home))))
        return
    if args.warm and not args.gang:
        import importlib.util
        spec = importlib.util.spec_from_file_location("warm_start", HERE / "warm_start.py")
        warm_start = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(warm_start)  # type: ignore[union-attr]
        with tempfile.TemporaryDirectory(prefix="hpo-bench-warm-") as tmp:
            lines = warm_start.compare(args.trials, args.repeat, Path(tmp), run_child, args.remote)
        print(f"\nWarm trial starts, {os.cpu_count()} CPUs (each case in its own process):\n" + "\n".join(lines))
        return
    if args.gang:
        import importlib.util
        spec = importlib.util.spec_from_file_location("gang_start", HERE / "gang_start.py")
        gang_start = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(gang_start)  # type: ignore[union-attr]
        trials = args.trials if "--trials" in sys.argv else 20
        with tempfile.TemporaryDirectory(prefix="hpo-bench-gang-") as tmp:
            lines = gang_start.compare(args.gang, trials, Path(tmp), args.remote, run_child, args.warm)
        print(f"\nDistributed-trial start (trial chosen -> every process running), gang of {args.gang}, "
              f"{os.cpu_count()} CPUs:\n" + "\n".join(lines))
        return

    with tempfile.TemporaryDirectory(prefix="hpo-bench-") as tmp, contextlib.ExitStack() as stack:
        # with --kubernetes, local and Kubernetes runs alternate: a load from other processes that comes and goes
        # falls on both alike (their CPU per trial is compared)
        kubeconfig = stack.enter_context(fake_cluster(Path(tmp))) if args.kubernetes else None
        runs, kube_runs = [], []
        for i in range(args.repeat):
            runs.append(run_child([sys.executable, __file__, "--side", "hpo", "--trials", str(args.trials),
                                   "--concurrency", str(args.concurrency), "--home", f"{tmp}/hpo{i}"], 1200))
            print(f"hpo run {i + 1}: {runs[-1]['trials_per_s']} trials/s", file=sys.stderr)
            if kubeconfig is not None:
                kube_runs.append(run_child([sys.executable, __file__, "--side", "hpo", "--kubeconfig", kubeconfig,
                                            "--trials", str(args.trials), "--concurrency", str(args.concurrency),
                                            "--home", f"{tmp}/kube{i}"], 1200))
                print(f"hpo kubernetes run {i + 1}: {kube_runs[-1]['trials_per_s']} trials/s", file=sys.stderr)
        stack.close()  # the fake cluster ends before the other measurements
        hpo = sorted(runs, key=lambda r: r["trials_per_s"])[len(runs) // 2]
        kube = sorted(kube_runs, key=lambda r: r["trials_per_s"])[len(kube_runs) // 2] if kube_runs else None
        remote = None
        if args.remote:
            remote_runs = []
            for i in range(args.repeat):
                remote_runs.append(run_child([sys.executable, __file__, "--side", "hpo", "--remote", "--trials",
                                              str(args.trials), "--concurrency", str(args.concurrency),
                                              "--home", f"{tmp}/remote{i}"], 1200))
                print(f"hpo remote run {i + 1}: {remote_runs[-1]['trials_per_s']} trials/s", file=sys.stderr)
            remote = sorted(remote_runs, key=lambda r: r["trials_per_s"])[len(remote_runs) // 2]
        nni = None
        if not args.no_nni:
            if not NNI_PYTHON.exists():
                sys.exit("NNI venv missing: run `bash benchmarks/setup_nni.sh` first (or pass --no-nni)")
            nni = run_child([str(NNI_PYTHON), str(HERE / "nni_side.py"), "--trials", str(args.trials),
                             "--concurrency", str(args.concurrency), "--port", str(free_port())], 1800)
        rss = None
        if args.rss_trials:
            rss = run_child([sys.executable, __file__, "--side", "rss", "--rss-trials", str(args.rss_trials),
                             "--home", f"{tmp}/rss"], 1200)

    print(f"\nOrchestration: {args.trials} zero-work trials, concurrency {args.concurrency}, {os.cpu_count()} CPUs")
    print(f"{'':28}{'hpo':>12}{'NNI 3.0':>12}")
    rows = [("trials/s", "trials_per_s"), ("seconds", "seconds"), ("time to first trial (s)", "time_to_first_trial_s"),
            ("engine peak RSS (MB)", "peak_rss_mb"), ("pairing mismatches", "pairing_mismatches"),
            ("pairing checked", "pairing_checked")]
    for label, key in rows:
        print(f"{label:28}{hpo[key]!s:>12}{(nni or {}).get(key, '-')!s:>12}")
    print(f"hpo trials/s over {len(runs)} runs: {[r['trials_per_s'] for r in runs]} (median reported)")
    if nni:
        print(f"throughput ratio hpo/NNI: {hpo['trials_per_s'] / nni['trials_per_s']:.1f}x")
    if remote:
        print(f"\nRemote service (one sshd on 127.0.0.1, asyncssh): {remote['trials_per_s']} trials/s, "
              f"{remote['seconds']} s, time to first trial {remote['time_to_first_trial_s']} s, "
              f"{remote['completed']}/{args.trials} succeeded, pairing mismatches {remote['pairing_mismatches']}")
        print(f"throughput ratio remote/local: {remote['trials_per_s'] / hpo['trials_per_s']:.2f}")
    if kube:
        print(f"\nKubernetes service (fake cluster: API server + process kubelet in another process): "
              f"{kube['trials_per_s']} trials/s, {kube['completed']}/{args.trials} succeeded, "
              f"pairing mismatches {kube['pairing_mismatches']}")
        print(f"throughput ratio kubernetes/local: {kube['trials_per_s'] / hpo['trials_per_s']:.2f}")
        print(f"API requests per trial: {kube['api_requests_per_trial']} (runs: "
              f"{[r['api_requests_per_trial'] for r in kube_runs]})")
        kube_cpu = statistics.median(r["engine_cpu_ms_per_trial"] for r in kube_runs)
        local_cpu = statistics.median(r["engine_cpu_ms_per_trial"] for r in runs)
        print(f"engine CPU per trial (median of runs): kubernetes {kube_cpu:.2f} ms "
              f"{[r['engine_cpu_ms_per_trial'] for r in kube_runs]}, local {local_cpu:.2f} ms "
              f"{[r['engine_cpu_ms_per_trial'] for r in runs]} (ratio {kube_cpu / local_cpu:.2f}); the RSS sampler's "
              f"CPU, left out: kubernetes {[r['sampler_cpu_ms_per_trial'] for r in kube_runs]}, local "
              f"{[r['sampler_cpu_ms_per_trial'] for r in runs]} ms")
    if rss:
        print(f"engine peak RSS with {rss['finished_in_store']} finished trials in the store "
              f"(resumed, {rss['extra_trials']} more run): {rss['peak_rss_mb']} MB")


if __name__ == "__main__":
    main()
