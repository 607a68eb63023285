"""``python -m tests.fake_k8s --kubeconfig out.yaml [--capacity cpu=4,memory=8Gi]``: serve until
SIGTERM/SIGINT, then kill every pod process."""
from __future__ import annotations

import argparse
import signal
import tempfile
import threading
from pathlib import Path

from .cluster import FakeCluster


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fake_k8s")
    parser.add_argument("--kubeconfig", required=True, type=Path)
    parser.add_argument("--capacity", default="cpu=4,memory=8Gi,nvidia.com/gpu=0")
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--token", default="test-token")
    parser.add_argument("--tls", action="store_true")
    args = parser.parse_args(argv)
    capacity = dict(item.split("=", 1) for item in args.capacity.split(",") if item)
    root = args.root or Path(tempfile.mkdtemp(prefix="fake-k8s-"))
    cluster = FakeCluster(root=root, capacity=capacity, token=args.token, tls=args.tls)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    cluster.start()
    cluster.write_kubeconfig(args.kubeconfig, auth="cert" if args.tls else "token")
    print(cluster.url, flush=True)
    try:
        done.wait()
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
