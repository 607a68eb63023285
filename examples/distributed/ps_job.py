"""A parameter-server training job in the standard library only: workers push gradients to the parameter
server over TCP and read back the averaged state, using nothing but the environment hpo gives each process.

Run it as a distributed trial (see config.yml here): ``worker`` processes train, the ``ps`` process serves.
Each worker minimises ``|x - target|^2`` from its own data shard; the server applies the mean of all workers'
gradients once every worker has pushed its step (synchronous SGD), so every worker sees the same state.
"""
import json
import os
import socket
import socketserver
import sys
import threading
import time

import hpo

DIM = 8


def cluster() -> tuple[dict, str, int]:
    """The cluster layout, this process's role and index (TF_CONFIG as TensorFlow reads it)."""
    config = json.loads(os.environ["TF_CONFIG"]) if "TF_CONFIG" in os.environ else {
        "cluster": {"worker": os.environ["WORKER_HOSTS"].split(","), "ps": os.environ["PS_HOSTS"].split(",")},
        "task": {"type": os.environ["TYPE"], "index": int(os.environ["INDEX"])}}
    return config["cluster"], config["task"]["type"], int(config["task"]["index"])


def serve(address: str, workers: int, lr: float) -> None:
    """The parameter server: state, and one barrier per step (the mean of the workers' gradients)."""
    state = [0.0] * DIM
    pending: dict[int, list[list[float]]] = {}
    lock = threading.Condition()

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            for line in self.rfile:
                msg = json.loads(line)
                with lock:
                    if msg["op"] == "push":
                        grads = pending.setdefault(msg["step"], [])
                        grads.append(msg["grad"])
                        if len(grads) == workers:
                            for i in range(DIM):
                                state[i] -= lr * sum(g[i] for g in grads) / workers
                            lock.notify_all()
                        while len(pending[msg["step"]]) < workers:
                            lock.wait()
                    reply = {"state": state}
                self.wfile.write((json.dumps(reply) + "\n").encode())

    host, port = address.rsplit(":", 1)
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    with socketserver.ThreadingTCPServer(("", int(port)), Handler) as server:
        print(f"parameter server on port {port} for {workers} workers", flush=True)
        server.serve_forever()  # like a TensorFlow ps: runs until the trial ends it


def connect(address: str, timeout: float = 60.0) -> socket.socket:
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection((host, int(port)), timeout=timeout)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def work(ps: str, index: int, workers: int, steps: int) -> None:
    target = [float(i + 1) for i in range(DIM)]
    sock = connect(ps)
    stream = sock.makefile("rw")
    state = [0.0] * DIM
    for step in range(steps):
        # this worker's shard sees the target shifted by its index; the shifts cancel out in the mean
        shift = index - (workers - 1) / 2
        grad = [2 * (x - (t + shift)) for x, t in zip(state, target)]
        stream.write(json.dumps({"op": "push", "step": step, "grad": grad}) + "\n")
        stream.flush()
        state = json.loads(stream.readline())["state"]
        loss = sum((x - t) ** 2 for x, t in zip(state, target))
        hpo.report_intermediate_result(loss)
    print(f"worker {index} done: loss {loss:.6f}", flush=True)
    hpo.report_final_result(loss)


def main() -> None:
    params = hpo.get_next_parameter() or {}
    lr = float(params.get("lr", 0.1))
    steps = int(os.environ.get("STEPS", params.get("steps", 20)))
    layout, role, index = cluster()
    if role == "ps":
        serve(layout["ps"][index], len(layout["worker"]), lr)
    elif role == "worker":
        work(layout["ps"][0], index, len(layout["worker"]), steps)
    else:
        sys.exit(f"unknown role {role!r}")


if __name__ == "__main__":
    main()
