"""The dashboard server under hostile or broken clients (issue 13, items 9, 10, 14, 15), against real
experiments and raw sockets: idle and slow connections, event-stream caps, huge logs, malformed requests,
logs replaced by links, and tokens scoped to their experiment."""
from __future__ import annotations

import http.client
import json
import os
import re
import resource
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from browser_support import CONTROLLED_SPACE, CONTROLLED_TRIAL, SseReader, get_json, request, serve_app
from conftest import PY, ROOT, wait_until, write_script
from hpo import Experiment
from hpo.storage import ExperimentStore
from webui import server

QUICK = "import hpo\nprint('hello', flush=True)\nhpo.report_final_result(hpo.get_next_parameter()['x'])\n"


def _token(exp: Experiment) -> str:
    return (Path(exp.directory) / ".token").read_text().strip()


def _raw(port: int, data: bytes, timeout: float = 30.0) -> bytes:
    """Send ``data`` on a new connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def _body(answer: bytes) -> bytes:
    return answer.split(b"\r\n\r\n", 1)[1]


def _trickle(port: int, data: bytes, pace: float, give_up: float) -> tuple[bool, bytes, float]:
    """Send ``data`` one byte every ``pace`` s, as a slowloris client does, until the server closes the
    connection or ``give_up`` s pass: (closed, what the server answered, seconds)."""
    started = time.monotonic()
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        i = 0
        while time.monotonic() - started < give_up:
            if i < len(data):
                try:
                    sock.send(data[i:i + 1])
                except OSError:  # reset by the server
                    return True, answer, time.monotonic() - started
                i += 1
            if select.select([sock], [], [], pace)[0]:
                try:
                    chunk = sock.recv(65536)
                except OSError:
                    return True, answer, time.monotonic() - started
                if not chunk:
                    return True, answer, time.monotonic() - started
                answer += chunk
    return False, answer, time.monotonic() - started


# -- item 9: connections ---------------------------------------------------------------------------------

GATED_TRIAL = """
import os, time
import hpo
p = hpo.get_next_parameter()
gate = os.path.join(os.path.dirname(os.path.abspath(__file__)), "go")
deadline = time.time() + 120
while not os.path.exists(gate) and time.time() < deadline:
    time.sleep(0.05)
hpo.report_final_result(p["x"])
"""


def test_idle_connections_starve_neither_the_dashboard_nor_the_trials(tmp_path: Path) -> None:
    """An engine started with a low open-files limit meets cap + 100 idle connections: it keeps at most cap
    of them, still answers the dashboard at once, and the trials it starts meanwhile succeed."""
    cap, flood = 64, 164
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 1024:
        pytest.skip(f"the hard open-files limit ({hard}) leaves no room to raise")
    code = tmp_path / "code"
    write_script(code, "trial.py", GATED_TRIAL)
    launch = write_script(tmp_path, "launch.py", f"""
        import resource, sys
        sys.path.insert(0, {str(ROOT)!r})
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        import webui.server
        webui.server.MAX_CONNECTIONS = {cap}
        webui.server.IDLE_TIMEOUT = 300.0  # the flood stays open (and counted) for the whole test
        from hpo import Experiment
        exp = Experiment("random", "local")
        exp.config.search_space = {{"x": {{"_type": "uniform", "_value": [0, 1]}}}}
        exp.config.trial_command = {f"{PY} trial.py"!r}
        exp.config.trial_code_directory = {str(code)!r}
        exp.config.trial_concurrency = 2
        exp.config.max_trial_number = 6
        exp.start(port=0)
        print(exp.port, exp.directory, flush=True)
        exp.wait()
        exp.stop()
    """)
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft[0], min(hard, 4096)), hard))
    proc = subprocess.Popen([sys.executable, str(launch)], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    idle: list[socket.socket] = []
    try:
        assert select.select([proc.stdout], [], [], 60)[0], "the experiment did not start"
        port_text, directory = proc.stdout.readline().split(maxsplit=1)  # type: ignore[union-attr]
        port, directory = int(port_text), Path(directory.strip())
        for _ in range(flood):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            idle.append(sock)
        # queued behind the whole flood, so answered only once every idle connection has been dealt with
        assert request(f"http://127.0.0.1:{port}/api/v1/experiment", timeout=30)[0] == 200
        served = [c for c in psutil.Process(proc.pid).net_connections(kind="tcp")
                  if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port]
        assert len(served) <= cap, f"{len(served)} connections held, more than the cap of {cap}"
        (code / "go").write_text("")  # four more trials start while the idle connections are still open
        with ExperimentStore(directory, readonly=True) as store:
            def ended() -> dict[str, int] | None:
                counts = store.status_counts()
                return counts if sum(counts.values()) == 6 and not counts["WAITING"] + counts["RUNNING"] else None
            counts = wait_until(ended, 90, interval=0.2, what="six ended trials")
            assert counts["SUCCEEDED"] == 6, [t["message"] for t in store.trials()]
        assert proc.wait(60) == 0
    finally:
        for sock in idle:
            sock.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        resource.setrlimit(resource.RLIMIT_NOFILE, soft)


def test_a_full_house_of_served_clients_refuses_newcomers(make_experiment, monkeypatch) -> None:
    """Connections that made a request are never closed to make room: past the cap a newcomer is told 503
    (and gets in once one of them goes)."""
    monkeypatch.setattr(server, "MAX_CONNECTIONS", 16)
    exp = make_experiment(QUICK, max_trial_number=1)
    exp.start(port=0)
    assert exp.wait(30)
    served = []
    try:
        for _ in range(16):
            conn = http.client.HTTPConnection("127.0.0.1", exp.port, timeout=30)
            conn.request("GET", "/api/v1/experiment")
            assert conn.getresponse().read() and conn.sock is not None  # kept alive
            served.append(conn)
        answer = _raw(exp.port, b"")
        assert _status(answer) == 503 and b"too many open connections" in answer
        conn = served.pop()
        conn.request("GET", "/api/v1/trials")
        assert json.loads(conn.getresponse().read())[0]["status"] == "SUCCEEDED"  # the first ones are still served
        conn.close()

        def admitted() -> bool:
            try:
                return request(f"http://127.0.0.1:{exp.port}/api/v1/experiment")[0] == 200
            except OSError:  # refused while the server had not yet seen the close
                return False
        wait_until(admitted, 10, what="a free place")
    finally:
        for conn in served:
            conn.close()


def test_silent_and_slow_clients_are_cut_off(make_experiment, monkeypatch) -> None:
    monkeypatch.setattr(server, "IDLE_TIMEOUT", 1.0)
    monkeypatch.setattr(server, "BODY_TIMEOUT", 1.0)
    exp = make_experiment(CONTROLLED_TRIAL, search_space=CONTROLLED_SPACE, trial_concurrency=1, max_trial_number=1)
    exp.start(port=0)
    try:
        # a connection that never sends a request
        closed, answer, _ = _trickle(exp.port, b"", pace=0.1, give_up=20)
        assert closed and answer == b""
        # slowloris: the headers, one byte every 0.2 s (12 s in all), are cut off long before they end
        head = b"GET /api/v1/experiment HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: yes\r\n\r\n"
        closed, answer, took = _trickle(exp.port, head, pace=0.2, give_up=30)
        assert closed and answer == b"" and took < len(head) * 0.2 / 2
        # a body that trickles in gets a 408
        body = json.dumps({"trial_concurrency": 1}).encode() + b" " * 40
        slow = (b"PATCH /api/v1/experiment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Authorization: Bearer " + _token(exp).encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body))
        with socket.create_connection(("127.0.0.1", exp.port), timeout=30) as sock:
            sock.sendall(slow)
            answer = b""
            for i in range(len(body)):
                if select.select([sock], [], [], 0.2)[0]:
                    answer = sock.recv(65536)
                    break
                sock.send(body[i:i + 1])
        assert _status(answer) == 408 and b"did not arrive within 1 s" in answer
        # a client that authenticates is served as before
        assert get_json(f"http://127.0.0.1:{exp.port}/api/v1/experiment")["id"] == exp.id
    finally:
        (Path(exp.config.trial_code_directory) / "release").write_text("")


def test_event_streams_are_capped_per_kind_and_never_lock_out(make_experiment, monkeypatch) -> None:
    """Streams without the token cannot crowd out those with it, and a new stream always gets in: past
    the cap of its kind, the oldest stream of that kind is closed."""
    monkeypatch.setattr(server, "MAX_STREAMS", 2)
    exp = make_experiment(QUICK, max_trial_number=1)
    exp.start(port=0)
    assert exp.wait(30)
    auth = {"Authorization": f"Bearer {_token(exp)}"}
    streams: list[SseReader] = []

    def stream(headers: dict[str, str] | None = None) -> SseReader:
        sse = SseReader("127.0.0.1", exp.port, "/api/v1/events", headers=headers)
        streams.append(sse)
        assert sse.status == 200 and sse.next("hello")[0] == "hello"
        return sse

    try:
        plain = [stream(), stream()]
        tokened = [stream(auth), stream(auth)]
        plain.append(stream())  # past the cap of streams without the token: the oldest of them closes
        assert plain[0].next("__closed__")[0] == "__closed__"
        tokened.append(stream(auth))  # and with the token: the oldest with the token closes
        assert tokened[0].next("__closed__")[0] == "__closed__"
        for sse in (plain[1], plain[2], tokened[1], tokened[2]):  # the others stay open
            with pytest.raises(TimeoutError):
                sse.next("__closed__", timeout=0.5)
    finally:
        for sse in streams:
            sse.close()


# -- item 10: a huge log's tail ----------------------------------------------------------------------------

def _peak_rss(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM), in bytes."""
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", text, re.M).group(1)) * 1024  # type: ignore[union-attr]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux's /proc")
def test_tail_of_a_huge_log_reads_from_the_end(make_experiment, tmp_path: Path) -> None:
    exp = make_experiment(QUICK, max_trial_number=2, trial_concurrency=1)
    exp.start(port=0)
    assert exp.wait(30)
    exp.stop()
    big, small = [t["id"] for t in exp.list_trial_jobs()]
    trial_dir = Path(exp.directory) / "trials" / big
    with open(trial_dir / "stdout.log", "wb") as fh:  # 10 lines, 100 MB of zeros (sparse), 1000 lines
        fh.write(b"".join(b"head %d\n" % i for i in range(10)))
        fh.seek(100 << 20)
        fh.write(b"".join(b"tail %d\n" % i for i in range(1000)))
    with open(trial_dir / "stderr.log", "wb") as fh:  # one 100 MB line that never ends
        fh.write(b"x" * 10)
        fh.truncate(100 << 20)
    view = write_script(tmp_path, "view.py", f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from hpo import Experiment
        view = Experiment.view({exp.id!r}, port=0, non_blocking=True)
        print(view.port, flush=True)
        sys.stdin.read()
        view.stop()
    """)
    proc = subprocess.Popen([sys.executable, str(view)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert select.select([proc.stdout], [], [], 60)[0], "the view did not start"
        base = f"http://127.0.0.1:{int(proc.stdout.readline())}/api/v1/trials"  # type: ignore[union-attr]
        assert get_json(f"{base}/{small}/logs?tail=50")["lines"] == ["hello"]  # warm up
        before = _peak_rss(proc.pid)
        for _ in range(12):
            tail = get_json(f"{base}/{big}/logs?tail=50")
            assert tail["lines"] == [f"tail {i}" for i in range(950, 1000)]
            assert tail["line"] == 960 and tail["next_line"] == 1010 and tail["total_lines"] == 1010
        for _ in range(3):
            tail = get_json(f"{base}/{big}/logs?tail=50&stream=stderr")
            assert tail["total_lines"] == 1 and tail["line"] == 0
            assert tail["lines"] == ["x" * 10 + "\0" * (server._MAX_LINE - 10) + " …[line truncated]"]
        page = get_json(f"{base}/{big}/logs?line=9&limit=3")
        assert page["lines"][0] == "head 9" and page["lines"][2] == "tail 1" and page["next_line"] == 12
        assert page["lines"][1].endswith(" …[line truncated]")
        grown = _peak_rss(proc.pid) - before
        assert grown < 50 << 20, f"the server's peak memory grew by {grown >> 20} MB"
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait(30)


# -- item 14: malformed requests -----------------------------------------------------------------------------

def test_bad_requests_get_a_one_line_4xx_and_a_bounded_log(make_experiment, caplog) -> None:
    exp = make_experiment(CONTROLLED_TRIAL, search_space=CONTROLLED_SPACE, trial_concurrency=1, max_trial_number=1)
    exp.start(port=0)
    port, token = exp.port, _token(exp)
    try:
        host = b"Host: 127.0.0.1\r\nConnection: close\r\n"
        stop = b"POST /api/v1/experiment/stop HTTP/1.1\r\n" + host + b"Content-Length: 0\r\n"
        answer = _raw(port, stop + b"Authorization: Bearer \xff\xfe" + token.encode() + b"\r\n\r\n")
        assert _status(answer) == 401 and _body(answer).count(b"\n") == 0

        def patch(body: bytes) -> bytes:
            return _raw(port, b"PATCH /api/v1/experiment HTTP/1.1\r\n" + host + b"Authorization: Bearer "
                        + token.encode() + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                        % len(body) + body)

        for body, status in ((b"[" * 100000 + b"]" * 100000, 400),
                             (b'{"search_space": ' + b'{"a": ' * 40 + b"1" + b"}" * 41, 400),
                             (b'{"search_space": "' + b"a" * (2 << 20) + b'"}', 413),
                             (b"\xff\xfe{", 400)):
            answer = patch(body)
            assert _status(answer) == status and _body(answer).strip().count(b"\n") == 0, answer[:300]
        live = get_json(f"http://127.0.0.1:{port}/api/v1/experiment")  # nothing changed, nothing broke
        assert live["live"] and live["config"]["search_space"] == CONTROLLED_SPACE

        with serve_app(Path(exp.directory), token=token, public=True) as public:
            public_port = int(public.rsplit(":", 1)[1])
            cookie = f"Cookie: {server._cookie_name(exp.id)}=\xff".encode("latin-1")
            answer = _raw(public_port, b"GET /api/v1/experiment HTTP/1.1\r\n" + host + cookie + b"\r\n\r\n")
            assert _status(answer) == 401
            answer = _raw(public_port, b"GET /api/v1/experiment HTTP/1.1\r\n" + host + b"Authorization: Bearer "
                          + token.encode() + b"\r\n\r\n")
            assert _status(answer) == 200

        # a flood of malformed requests, and of requests that meet a broken registry (an internal error)
        for _ in range(40):
            answer = _raw(port, b"GET /api/v1/experiment HTTP/1.1\r\nHost: 127.0.0.1\r\nno colon here\r\n\r\n")
            assert _status(answer) == 400
        (Path(os.environ["HPO_HOME"]) / "registry.db").write_bytes(b"not a database" * 100)
        for _ in range(40):
            status, headers, body = request(f"http://127.0.0.1:{port}/api/v1/experiments")
            assert status == 500 and headers["Content-Type"].startswith("application/json")
            assert json.loads(body)["error"].startswith("internal error: DatabaseError")
        engine_log = (Path(exp.directory) / "engine.log").read_text()
        webui_records = re.findall(r"^\S+ \S+ \w+ hpo\.webui: ", engine_log, re.M)
        assert len(webui_records) <= 2 * server._LOG_BURST, engine_log[-3000:]  # a minute's window may turn
        assert engine_log.count("Traceback") <= 2  # one per kind of error at most
        assert not [r for r in caplog.records if not r.name.startswith("hpo")], "logged outside the engine's log"
        assert len([r for r in caplog.records if r.exc_info]) <= 2
    finally:
        (Path(exp.config.trial_code_directory) / "release").write_text("")


# -- item 15: what is served, and to whom -----------------------------------------------------------------------

def test_logs_are_served_only_from_regular_files_in_the_trials_folder(make_experiment, tmp_path: Path) -> None:
    exp = make_experiment(QUICK, max_trial_number=4, trial_concurrency=2)
    exp.start(port=0)
    assert exp.wait(30)
    base = f"http://127.0.0.1:{exp.port}/api/v1/trials"
    token = _token(exp)
    directory = Path(exp.directory)
    linked, hardlinked, fifo, moved = [t["id"] for t in exp.list_trial_jobs()]
    (directory / "trials" / linked / "stderr.log").unlink()
    (directory / "trials" / linked / "stderr.log").symlink_to(Path("..") / ".." / ".token")
    (directory / "trials" / hardlinked / "stderr.log").unlink()
    os.link(directory / ".token", directory / "trials" / hardlinked / "stderr.log")
    (directory / "trials" / fifo / "stderr.log").unlink()
    os.mkfifo(directory / "trials" / fifo / "stderr.log")
    elsewhere = tmp_path / "elsewhere"
    (directory / "trials" / moved).rename(elsewhere)
    (directory / "trials" / moved).symlink_to(elsewhere)
    try:
        for trial_id in (linked, hardlinked, fifo, moved):
            for query in ("stream=stderr", "stream=stderr&tail=5"):
                status, _, body = request(f"{base}/{trial_id}/logs?{query}", timeout=10)
                assert status == 403 and token.encode() not in body and b"not served" in body, (trial_id, body)
            assert get_json(f"{base}/{trial_id}")["log_sizes"]["stderr"] is None
            sse = SseReader("127.0.0.1", exp.port, f"/api/v1/trials/{trial_id}/logs/stream?stream=stderr")
            assert sse.status == 403
            sse.close()
        assert get_json(f"{base}/{linked}/logs")["lines"] == ["hello"]  # its own stdout still is
    finally:
        try:  # a reader stuck on the FIFO (as the old server's was) is let go
            os.close(os.open(directory / "trials" / fifo / "stderr.log", os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass


def test_tokens_are_scoped_to_their_experiment(make_experiment) -> None:
    first = make_experiment(QUICK, max_trial_number=1, experiment_name="first")
    first.run(port=0)
    second = make_experiment(QUICK, max_trial_number=1, experiment_name="second")
    second.run(port=0)
    token, other_token = _token(first), _token(second)
    mine = {"Authorization": f"Bearer {token}"}
    with serve_app(Path(first.directory), token=token, public=True) as base:
        rows = get_json(f"{base}/api/v1/experiments", headers=mine)
        assert [r["id"] for r in rows] == [first.id]
        other = f"{base}/api/v1/experiments/{second.id}"
        for path in ("/experiment", "/trials", "/export", f"/trials/{second.list_trial_jobs()[0]['id']}/logs"):
            status, _, body = request(other + path, headers=mine)
            assert status == 401 and b"its own token" in body, (path, status)
        assert request(f"{other}/trials", headers={"Authorization": "Bearer nope"})[0] == 401
        assert request(f"{base}/api/v1/experiments/nosuch/trials", headers=mine)[0] == 401
        assert get_json(f"{other}/experiment", headers={"Authorization": f"Bearer {other_token}"})["id"] == second.id
        assert len(get_json(f"{other}/trials?token={other_token}")) == 1
        cookie = f"{server._cookie_name(second.id)}={other_token}"
        assert get_json(f"{other}/export", headers={"Cookie": cookie})[0]["trial_id"]
        # the other experiment's token is no key to this one
        assert request(f"{base}/api/v1/experiment", headers={"Authorization": f"Bearer {other_token}"})[0] == 401
    # a loopback dashboard lists every experiment and opens the others read-only, by design
    with serve_app(Path(first.directory), token=token) as base:
        assert {r["id"] for r in get_json(f"{base}/api/v1/experiments")} == {first.id, second.id}
        assert get_json(f"{base}/api/v1/experiments/{second.id}/experiment")["read_only"] is True
