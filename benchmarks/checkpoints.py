"""Checkpoint benchmark: what saving a checkpoint through hpo costs over copying the files yourself.

    python benchmarks/checkpoints.py                      # 20 trials x 3 checkpoints of 50 MB, concurrency 2
    python benchmarks/checkpoints.py --trials 6 --size-mb 10
    python benchmarks/checkpoints.py --s3 --trials 6 --size-mb 20   # S3 storage (a moto server it starts)

Each trial writes a folder of ``--size-mb`` MB, then, timed side by side in the same process on the same files:

* ``copytree``: ``shutil.copytree`` of that folder to a folder beside the checkpoint storage (what a script without
  hpo does; on the same filesystem, and kept until the next step's copy is made, as hpo's policy keeps its latest
  checkpoint until the next one is reported), and
* ``report_checkpoint``: the same folder saved through hpo (copied under a partial name, ``metadata.json``,
  renamed, reported; the engine records it and applies the GC policy, defaults keep 2 per trial).

With ``--s3`` the experiment's ``checkpoint_storage`` is ``type: s3`` on a moto S3 server on loopback (started
by this script in its own process; ``pip install 'moto[server]' boto3``), and the two timed are:

* ``upload_file``: boto3's ``upload_file`` of each file of the folder (what a script without hpo does), and
* ``report_checkpoint``: the folder saved through hpo until it is whole in the bucket (``metadata.json``, which
  hpo uploads last, is there): staged, reported, uploaded by the engine.

Reported: the median time of each and hpo's overhead (target: at most 10 %), and the dashboard API's latency
while the checkpoints are written (a thread asks ``GET /api/v1/experiment`` and ``/trials`` every 100 ms;
target: median under 50 ms, i.e. the engine's loop is never blocked by checkpoint files).  hpo's checkpoint module
is imported on a trial's first use of it (the trial API itself stays light); that one-time cost is timed and reported
on its own, before the first step, so the per-checkpoint figures compare copies with copies.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TRIAL = r'''
import hpo, os, shutil, sys, tempfile, time
size = int(sys.argv[1]) * 2**20
count = int(sys.argv[2])
block = os.urandom(2**20)
s3 = sys.argv[3] if len(sys.argv) > 3 else None  # endpoint_url:bucket:prefix
if s3:
    import boto3
    endpoint, bucket, prefix = s3.rsplit(":", 2)
    client = boto3.client("s3", endpoint_url=endpoint)
# hpo's checkpoint module is imported on first use (the trial API stays cheap to import): that one-time cost of a
# trial (pathlib and the like, which a training script has loaded anyway) is timed on its own, not in the first step
t0 = time.perf_counter()
hpo.report_checkpoint
first_use = time.perf_counter() - t0
plain, through_hpo = [], []
for step in range(1, count + 1):
    hpo.report_intermediate_result(step)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "model")
        os.makedirs(src)
        for part in range(2):  # two files, like weights + optimizer state
            with open(os.path.join(src, f"part{part}.bin"), "wb") as fh:
                for _ in range(size // 2**20 // 2):
                    fh.write(block)
        copies = os.path.join(os.path.dirname(os.environ["HPO_CHECKPOINT_DIR"]), "plain-copies", hpo.get_trial_id())
        copy = os.path.join(copies, str(step))
        # alternate the order over all trials' steps (the second copy of a step is the slower one): with an odd
        # number of steps per trial, alternating by step alone would put one of them second more often
        for which in ((0, 1) if (step + hpo.get_sequence_id()) % 2 else (1, 0)):
            os.sync()
            t0 = time.perf_counter()
            if which == 0 and s3:
                for name in sorted(os.listdir(src)):
                    client.upload_file(os.path.join(src, name), bucket, f"plain/{hpo.get_trial_id()}/{step}/{name}")
                plain.append(time.perf_counter() - t0)
            elif which == 0:  # onto the storage's filesystem, kept until both are timed (as hpo's copy is)
                shutil.copytree(src, copy)
                plain.append(time.perf_counter() - t0)
            else:
                uid = hpo.report_checkpoint(src, {"steps_completed": step})
                while s3:  # whole in the bucket once metadata.json (uploaded last) is there
                    try:
                        client.head_object(Bucket=bucket, Key=f"{prefix}/{uid}/metadata.json")
                        break
                    except client.exceptions.ClientError:
                        time.sleep(0.01)
                through_hpo.append(time.perf_counter() - t0)
        # the previous step's copy goes now, as hpo's policy (keep the latest) removes the previous checkpoint:
        # both sides then write beside as much kept data, onto a filesystem that frees as much
        shutil.rmtree(os.path.join(copies, str(step - 1)), ignore_errors=True)
hpo.report_final_result({"default": 1.0, "plain": plain, "hpo": through_hpo, "first_use": first_use})
'''


def poll_api(port: int, stop: threading.Event, latencies: list[float]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    while not stop.is_set():
        for path in ("/api/v1/experiment", "/api/v1/trials?limit=50"):
            t0 = time.perf_counter()
            try:
                conn.request("GET", path)
                conn.getresponse().read()
                latencies.append(time.perf_counter() - t0)
            except OSError:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        stop.wait(0.1)


def start_s3() -> tuple[subprocess.Popen[bytes], str]:
    """A moto S3 server (its own process) on a free loopback port with a fresh bucket, dummy credentials in the
    environment (which the engine and trials inherit); returns it and ``endpoint:bucket:prefix``."""
    import socket

    import boto3

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                sys.exit("the moto S3 server did not start (pip install 'moto[server]' boto3)")
            time.sleep(0.1)
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="hpo-bench")
    return server, f"{endpoint}:hpo-bench:ckpt"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--checkpoints", type=int, default=3, help="per trial")
    ap.add_argument("--size-mb", type=int, default=50)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--no-gc", action="store_true", help="keep every checkpoint (save_trial_latest = all)")
    ap.add_argument("--s3", action="store_true", help="S3 storage on a moto server started here")
    args = ap.parse_args()
    s3_arg, server = "", None
    if args.s3:
        server, s3_arg = start_s3()

    with tempfile.TemporaryDirectory(prefix="hpo-bench-ckpt-") as tmp:
        os.environ["HPO_HOME"] = str(Path(tmp) / "home")
        code = Path(tmp) / "code"
        code.mkdir()
        (code / "trial.py").write_text(TRIAL)
        from hpo import Experiment
        from tuners import RandomTuner

        exp = Experiment(RandomTuner(seed=0), "local")
        exp.config.search_space = {"x": {"_type": "uniform", "_value": [0, 1]}}
        exp.config.trial_command = f"{sys.executable} trial.py {args.size_mb} {args.checkpoints} {s3_arg}"
        exp.config.trial_code_directory = code
        exp.config.trial_concurrency = args.concurrency
        exp.config.max_trial_number = args.trials
        if args.no_gc:
            exp.config.checkpoint_storage.save_trial_latest = args.checkpoints
        if args.s3:
            endpoint, bucket, prefix = s3_arg.rsplit(":", 2)
            for key, value in {"type": "s3", "bucket": bucket, "prefix": prefix, "endpoint_url": endpoint}.items():
                setattr(exp.config.checkpoint_storage, key, value)
        t0 = time.time()
        exp.start(port=0)
        stop, latencies = threading.Event(), []
        poller = threading.Thread(target=poll_api, args=(exp.port, stop, latencies), daemon=True)
        poller.start()
        exp.wait()
        seconds = time.time() - t0
        stop.set()
        poller.join()
        trials = exp.list_trial_jobs()
        rows = exp._store().checkpoints()
        kept = [r for r in rows if r["state"] == "COMPLETED"]
        on_disk = sum(f.stat().st_size for f in (exp.directory / "checkpoints").rglob("*") if f.is_file())
        exp.stop()
    if server is not None:
        server.kill()
        server.wait()

    plain = [t for trial in trials if trial["final"] for t in trial["final"]["plain"]]
    through = [t for trial in trials if trial["final"] for t in trial["final"]["hpo"]]
    mp, mh = statistics.median(plain), statistics.median(through)
    first_use = [trial["final"]["first_use"] for trial in trials if trial["final"]]
    lat = sorted(latencies)
    print(f"\nCheckpoints: {args.trials} trials x {args.checkpoints} checkpoints of {args.size_mb} MB, concurrency "
          f"{args.concurrency}, {os.cpu_count()} CPUs, {seconds:.1f} s")
    print(f"{sum(t['status'] == 'SUCCEEDED' for t in trials)}/{len(trials)} trials succeeded; {len(rows)} checkpoints, "
          f"{len(kept)} kept by the policy" + ("" if args.s3 else f", {on_disk / 2**20:.0f} MB on disk"))
    baseline = "boto3 upload_file" if args.s3 else "shutil.copytree"
    print(f"median per checkpoint: {baseline} {mp * 1000:.1f} ms, hpo.report_checkpoint {mh * 1000:.1f} ms "
          f"(overhead {100 * (mh / mp - 1):+.1f} %; per-checkpoint ratios median "
          f"{statistics.median(h / p for h, p in zip(through, plain)):.3f})")
    print(f"once per trial, hpo's checkpoint module imported on first use: median {statistics.median(first_use) * 1000:.1f} ms")
    print(f"dashboard API while writing: {len(lat)} requests, median {statistics.median(lat) * 1000:.1f} ms, "
          f"p95 {lat[int(0.95 * (len(lat) - 1))] * 1000:.1f} ms, max {lat[-1] * 1000:.1f} ms")
    print(json.dumps({"storage": "s3" if args.s3 else "shared_fs", "baseline_ms": round(mp * 1000, 1), "report_checkpoint_ms": round(mh * 1000, 1),
                      "overhead_pct": round(100 * (mh / mp - 1), 1), "api_median_ms": round(statistics.median(lat) * 1000, 1),
                      "api_p95_ms": round(lat[int(0.95 * (len(lat) - 1))] * 1000, 1)}))


if __name__ == "__main__":
    main()
