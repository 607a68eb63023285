"""The remote side of the remote training service: one file, standard library only (Python >= 3.6).

Uploaded next to the trial API and run over SSH as ``python agent.py serve``.  It reads JSON
commands, one a line, on stdin and writes JSON events, one a line, on stdout; the engine's end is
``training_services/remote.py``.  Nothing here ever connects to the engine.

Each trial runs detached from the SSH session so that a dropped connection does not end it:

* ``launch`` forks a *waiter* that leaves the session (``setsid``) and starts ``/bin/sh -c COMMAND``
  in a session and process group of its own, stdout/stderr to ``stdout.log``/``stderr.log`` and
  reports (``HPO_REPORT_FILE``) to ``reports.jsonl`` in the trial folder.  It writes ``pid.json``,
  enforces ``max_duration``, ends what the trial left in its group when it exits, and writes
  ``exit.json`` last.
* The agent follows each trial's three files from byte offsets and sends new bytes, then the exit
  status once ``exit.json`` exists and everything before it was sent.  After a reconnect a new agent
  is told to ``follow`` the same trials from the offsets the engine already has (its reply says
  whether each still runs, and the exit code of one that ended meanwhile).
* ``kill`` sends SIGTERM to the trial's group and every descendant, SIGKILL after ``grace``.
* Warm starts (a ``launch`` with ``warm``: the command is ``python script.py args`` or ``python -m module args``):
  the agent starts the local service's zygote (``zygote.py``, uploaded beside this file; Python >= 3.9) once,
  which preloads the listed modules; each such trial is then forked from it (under its supervisor, which the
  waiter follows through a status pipe and holds a lifeline to) instead of starting a fresh interpreter.  Where
  that cannot be (an older Python, another interpreter than this one, a zygote that would not start), the trial
  starts cold and the agent says why once (``ev: warn``).

When stdin closes (the engine or the connection went away) the agent exits; trials keep running.
"""
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time

STREAMS = ("reports.jsonl", "stdout.log", "stderr.log")
CHUNK = 1 << 16
POLL = 0.05


# -- processes ------------------------------------------------------------------------------------------
def process_table():
    """[(pid, ppid, pgid, state)] of every process visible here."""
    rows = []
    if os.path.isdir("/proc/self"):
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % name, "rb") as fh:
                    data = fh.read()
            except OSError:
                continue
            fields = data[data.rfind(b")") + 2:].split()
            try:
                rows.append((int(name), int(fields[1]), int(fields[2]), fields[0].decode()))
            except (IndexError, ValueError):
                continue
        return rows
    try:
        out = subprocess.run(["ps", "-axo", "pid=,ppid=,pgid=,stat="], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL).stdout.decode()
    except OSError:
        return rows
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0].isdigit():
            rows.append((int(parts[0]), int(parts[1]), int(parts[2]), parts[3][:1]))
    return rows


def descendants(pid, table=None):
    table = process_table() if table is None else table
    children = {}
    for p, pp, _, _ in table:
        children.setdefault(pp, []).append(p)
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            out.append(child)
            todo.append(child)
    return out


def group_alive(pgid, table=None):
    if table is None:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False  # no member at all: skip the scan
        except OSError:
            pass
        table = process_table()
    return any(g == pgid and state != "Z" for _, _, g, state in table)


def alive(pid, table=None):
    table = process_table() if table is None else table
    return any(p == pid and state != "Z" for p, _, _, state in table)


def signal_tree(pgid, pids, sig):
    try:
        os.killpg(pgid, sig)
    except (OSError, TypeError):
        pass
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def kill_tree(pid, pgid, grace, exited=lambda: True):
    """SIGTERM the group and every descendant of ``pid``; SIGKILL what is left after ``grace`` (blocking)."""
    tree = descendants(pid) if pid else []
    signal_tree(pgid, tree, signal.SIGTERM)
    deadline = time.time() + grace
    while time.time() < deadline:
        table = process_table()
        if exited() and not group_alive(pgid, table) and not any(alive(p, table) for p in tree):
            return
        time.sleep(0.02)
    signal_tree(pgid, tree + (descendants(pid) if pid else []), signal.SIGKILL)
    for _ in range(100):
        if exited() and not group_alive(pgid):
            return
        time.sleep(0.02)


def start_time(pid):
    """Kernel start time of ``pid`` (to tell a pid from a reused one), or None."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as fh:
            data = fh.read()
        return int(data[data.rfind(b")") + 2:].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def same_process(pid, started):
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass
    return started is None or start_time(pid) in (None, started)


def write_json(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(data, fh)
    os.rename(tmp, path)


def read_json(path):
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


# -- the waiter (a forked child that left the session) -----------------------------------------------------
def trial_env(msg):
    """The environment a trial runs with: the agent's, the engine's variables, the trial API on the path."""
    env = dict(os.environ)
    env.pop("HPO_REPORT_FD", None)
    for key, value in msg["env"].items():
        env[key] = value
    lib = msg.get("lib")
    if lib:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (lib, env.get("PYTHONPATH")) if p)
    env["HPO_REPORT_FILE"] = os.path.join(msg["dir"], STREAMS[0])
    return env


def waiter(msg, notify, warm=None):
    tdir = msg["dir"]
    grace = float(msg.get("grace") or 5.0)
    if warm is not None:
        warm_waiter(msg, notify, warm, grace)
        return
    env = trial_env(msg)
    open(env["HPO_REPORT_FILE"], "ab").close()
    try:
        with open(os.path.join(tdir, STREAMS[1]), "ab") as out, open(os.path.join(tdir, STREAMS[2]), "ab") as err:
            proc = subprocess.Popen(["/bin/sh", "-c", msg["cmd"]], cwd=msg["cwd"], env=env, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=err, start_new_session=True)
    except Exception as exc:  # noqa: BLE001 - reported to the engine
        if msg.get("remove_after"):
            shutil.rmtree(msg["remove_after"], ignore_errors=True)
        write_json(os.path.join(tdir, "exit.json"), {"code": None, "error": "%s: %s" % (type(exc).__name__, exc)})
        return
    write_json(os.path.join(tdir, "pid.json"), {"pid": proc.pid, "pgid": proc.pid, "waiter": os.getpid(),
                                                "waiter_start": start_time(os.getpid()), "time": time.time()})
    try:
        os.write(notify, b"%d\n" % proc.pid)
    except OSError:
        pass
    timed_out = False
    max_duration = msg.get("max_duration")
    deadline = time.time() + float(max_duration) if max_duration else None
    while True:
        try:
            code = proc.wait(timeout=None if deadline is None else max(0.0, deadline - time.time()))
            break
        except subprocess.TimeoutExpired:
            timed_out, deadline = True, None
            kill_tree(proc.pid, proc.pid, grace, lambda: proc.poll() is not None)
    if group_alive(proc.pid):  # the main process is gone: end what it left in its group
        kill_tree(0, proc.pid, 0.5)
    if msg.get("remove_after"):  # the copy of the checkpoint it restored
        shutil.rmtree(msg["remove_after"], ignore_errors=True)
    write_json(os.path.join(tdir, "exit.json"), {"code": code, "timeout": timed_out})


def warm_waiter(msg, notify, warm, grace):
    """The waiter of a trial forked by the zygote: ``warm`` is (its supervisor's pid, the write end of the
    supervisor's lifeline, the read end of its status pipe, on which it writes the trial's exit code)."""
    pid, _lifeline, status = warm
    try:  # the supervisor has ended once it is gone, not when its status pipe closes (it is exiting then)
        gone = os.pidfd_open(pid)
    except (AttributeError, OSError):
        gone = None
    write_json(os.path.join(msg["dir"], "pid.json"), {"pid": pid, "pgid": pid, "waiter": os.getpid(),
                                                      "waiter_start": start_time(os.getpid()), "time": time.time()})
    try:
        os.write(notify, b"%d\n" % pid)
    except OSError:
        pass
    data, ended, timed_out = b"", [False], False
    max_duration = msg.get("max_duration")
    deadline = time.time() + float(max_duration) if max_duration else None

    def read_status(timeout):
        nonlocal data
        if not ended[0] and select.select([status], [], [], timeout)[0]:
            chunk = os.read(status, 64)
            data += chunk
            ended[0] = not chunk
        return ended[0]

    while not read_status(None if deadline is None else max(0.0, deadline - time.time())):
        if deadline is not None and time.time() >= deadline:
            timed_out, deadline = True, None
            kill_tree(pid, pid, grace, lambda: read_status(0))
    if gone is not None:
        select.select([gone], [], [], 5.0)
        os.close(gone)
    try:
        code = int(data)
    except ValueError:  # the supervisor was killed before it could say
        code = -signal.SIGKILL
    if msg.get("remove_after"):
        shutil.rmtree(msg["remove_after"], ignore_errors=True)
    write_json(os.path.join(msg["dir"], "exit.json"), {"code": code, "timeout": timed_out})


def fork_waiter(msg, warm=None):
    """Start the waiter; returns (its pid, the read end of its notification pipe).  ``warm``: see
    :func:`warm_waiter` (the agent's copies of its descriptors are closed here)."""
    r, w = os.pipe()
    keep = {w} | (set(warm[1:]) if warm else set())
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            os.setsid()
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            low = 3
            for fd in sorted(keep):
                os.closerange(low, fd)
                low = fd + 1
            os.closerange(low, 65536)
            waiter(msg, w, warm)
        except BaseException:  # noqa: BLE001 - a child must never return into the agent's loop
            pass
        finally:
            os._exit(0)
    os.close(w)
    for fd in (warm[1:] if warm else ()):
        os.close(fd)
    return pid, r


# -- warm starts: the zygote of this agent -------------------------------------------------------------------
class WarmStarts:
    """The zygote (``zygote.py`` beside this file) that forks this agent's warm trials; started on first use."""

    SLOT = "HPO_ZYGOTE_ENV_SLOT"

    def __init__(self, agent):
        self.agent = agent
        self.sock = None
        self.proc = None
        self.base_env = None
        self.broken = None      # why warm starts are off on this host (then every trial starts cold)
        self.starts = 0         # a zygote that dies is replaced, twice at most
        self.last_error = None
        self.warned = set()

    def cold(self, why):
        self.warn("trials start cold on this machine: " + why)
        return None

    def fork(self, msg):
        """Fork the trial of ``msg`` from the zygote: (supervisor pid, lifeline write end, status read end), or
        None when it starts cold (the reason sent once)."""
        warm = msg["warm"]
        env = trial_env(msg)
        exe = shutil.which(warm["interpreter"], path=env.get("PATH"))
        if not exe or os.path.realpath(exe) != os.path.realpath(sys.executable):
            return self.cold("%r there is %s, not the interpreter of hpo's agent (%s)"
                             % (warm["interpreter"], exe or "not found", sys.executable))
        for _ in range(2):  # a zygote found dead is replaced once here (and at most twice in all)
            if self.sock is None:
                if self.starts >= 3:
                    self.broken = "the warm-start zygote died three times (last: %s)" % self.last_error
                self.starts += 1
                if self.broken or not self.start(warm.get("preload") or [], msg, env):
                    return self.cold(self.broken)
            forked = self.request(msg, dict(env, **(warm.get("flag_env") or {})))
            if forked is not None:
                break
        else:
            return self.cold(self.last_error)
        answer, life_w, status_r = forked
        if "pid" not in answer:
            os.close(life_w)
            os.close(status_r)
            return self.cold("the zygote could not fork a trial (%s)" % answer.get("error"))
        return answer["pid"], life_w, status_r

    def request(self, msg, env):
        """Ask the zygote to fork the trial: (its answer, lifeline write end, status read end), or None when the
        zygote is gone (then closed, its reason in ``last_error``)."""
        request = {"id": msg["id"], "argv": msg["warm"]["argv"], "cwd": msg["cwd"],
                   "grace": float(msg.get("grace") or 5.0),
                   "env_set": {k: v for k, v in env.items() if self.base_env.get(k) != v},
                   "env_unset": [k for k in self.base_env if k not in env]}
        fds = []
        try:
            fds.append(os.open(os.path.join(msg["dir"], STREAMS[1]), os.O_WRONLY | os.O_APPEND | os.O_CREAT))
            fds.append(os.open(os.path.join(msg["dir"], STREAMS[2]), os.O_WRONLY | os.O_APPEND | os.O_CREAT))
            fds.append(os.open(os.devnull, os.O_WRONLY))  # reports go to HPO_REPORT_FILE
            life_r, life_w = os.pipe()
            status_r, status_w = os.pipe()
            fds += [life_r, status_w]
            try:
                socket.send_fds(self.sock, [json.dumps(request).encode()], fds)
                data = self.sock.recv(1 << 20)
                if not data:
                    raise OSError("it exited; see zygote.log")
                return json.loads(data), life_w, status_r
            except (OSError, ValueError) as exc:
                os.close(life_w)
                os.close(status_r)
                self.close("the zygote is gone (%s)" % exc)
                return None
        finally:
            for fd in fds:
                os.close(fd)

    def start(self, preload, msg, first_env):
        """Start the zygote with what ``first_env`` (the first warm trial's environment) has in common with every
        trial's."""
        if sys.version_info < (3, 9):
            self.broken = "warm starts need Python 3.9 or newer there (it has %s)" % sys.version.split()[0]
            return False
        here = os.path.dirname(os.path.abspath(__file__))
        env = {k: v for k, v in first_env.items()
               if not k.startswith(("HPO_", "NNI_")) and k != "CUDA_VISIBLE_DEVICES"}
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            with open(os.path.join(os.path.dirname(msg["dir"].rstrip("/")), "zygote.log"), "ab") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, os.path.join(here, "zygote.py"), str(theirs.fileno())], cwd=msg["cwd"],
                    env=dict(env, **{self.SLOT: "x" * 512}), pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                    stdout=log, stderr=log, start_new_session=True)
            theirs.close()
            ours.sendall(json.dumps({"preload": list(preload), "function_file": None}).encode())
            ours.settimeout(600)
            hello = json.loads(ours.recv(1 << 20) or b"null") or {"error": "it exited; see zygote.log"}
            ours.settimeout(None)
        except (OSError, ValueError) as exc:
            theirs.close()
            ours.close()
            self.broken = "the warm-start zygote did not start (%s)" % exc
            return False
        if not hello.get("ready"):
            ours.close()
            self.broken = "the warm-start zygote refused: %s" % hello.get("error")
            return False
        for warning in hello.get("warnings") or []:
            self.warn("warm starts: " + warning)
        self.sock, self.base_env = ours, env
        return True

    def warn(self, text):
        """Tell the engine ``text`` (once)."""
        if text not in self.warned:
            self.warned.add(text)
            self.agent.send(ev="warn", msg=text)

    def close(self, why):
        self.last_error = why
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            self.proc.poll()  # reaped, if it has exited


# -- the agent ----------------------------------------------------------------------------------------------
class Trial:
    def __init__(self, tid, tdir, offsets=(0, 0, 0)):
        self.id, self.dir = tid, tdir
        self.off = list(offsets)
        self.pid = self.pgid = None
        self.child = None          # the waiter, when this agent forked it
        self.pipe = None           # its notification pipe
        self.pipe_buf = b""
        self.waiter_gone = False
        self.waiter_pid = self.waiter_start = None
        self.kill_at = None
        self.kill_tree = []
        self.kill_grace = None     # a kill asked before the pid was known
        self.watch_group = False   # waiter gone without exit.json but the group still runs


class Agent:
    def __init__(self, out_fd=1):
        self.out_fd = out_fd
        self.trials = {}
        self.listeners = []        # (until, socket) of do_listen
        self.buf = b""
        self.pending = []
        self.warm = WarmStarts(self)

    def send(self, **event):
        self.pending.append(json.dumps(event, separators=(",", ":")).encode() + b"\n")

    def flush(self):
        data = b"".join(self.pending)
        self.pending = []
        while data:
            data = data[os.write(self.out_fd, data):]

    # commands
    def do_hello(self, msg):
        self.send(ev="reply", req=msg["req"], pid=os.getpid(), python=sys.version.split()[0],
                  platform=sys.platform, home=os.path.expanduser("~"))

    def do_gpus(self, msg):
        exe = shutil.which("nvidia-smi")
        gpus = []
        if exe:
            own = set()
            for t in self.trials.values():
                if t.pgid:
                    own.add(t.pgid)
            gpus = self._nvidia(exe, own, msg.get("own_pgids") or [])
        self.send(ev="reply", req=msg["req"], gpus=gpus, has_smi=bool(exe))

    @staticmethod
    def _nvidia(exe, own, extra):
        own = set(own) | set(extra)

        def query(q, width):
            try:
                out = subprocess.run([exe, q, "--format=csv,noheader,nounits"], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                return []
            if out.returncode != 0:
                return []
            rows = [[c.strip() for c in ln.split(",")] for ln in out.stdout.decode().splitlines() if ln.strip()]
            return [r for r in rows if len(r) == width]

        busy = set()
        for uuid, pid in query("--query-compute-apps=gpu_uuid,pid", 2):
            try:
                mine = os.getpgid(int(pid)) in own
            except (ValueError, OSError):
                mine = False
            if not mine:
                busy.add(uuid)
        return [{"index": int(i), "uuid": u, "busy": u in busy} for i, u in query("--query-gpu=index,uuid", 2)
                if i.isdigit()]

    def do_unpack(self, msg):
        dest, archive = msg["dest"], msg["tar"]
        try:
            if not os.path.isdir(dest):
                tmp = dest + ".tmp%d" % os.getpid()
                shutil.rmtree(tmp, ignore_errors=True)
                with tarfile.open(archive) as tar:
                    if hasattr(tarfile, "data_filter"):
                        tar.extractall(tmp, filter="data")
                    else:
                        tar.extractall(tmp)
                try:
                    os.rename(tmp, dest)
                except OSError:  # another agent unpacked it first
                    shutil.rmtree(tmp, ignore_errors=True)
            self.send(ev="reply", req=msg["req"], ok=True)
        except Exception as exc:  # noqa: BLE001
            self.send(ev="reply", req=msg["req"], ok=False, error="%s: %s" % (type(exc).__name__, exc))

    def do_launch(self, msg):
        tid, tdir = msg["id"], msg["dir"]
        try:
            os.makedirs(tdir)
        except OSError:
            if not os.path.isdir(tdir):
                raise
        with open(os.path.join(tdir, "parameters.json"), "w") as fh:
            fh.write(msg["params"])
        for name, text in (msg.get("files") or {}).items():  # e.g. a distributed trial's MPI hostfile
            with open(os.path.join(tdir, os.path.basename(name)), "w") as fh:
                fh.write(text)
        for name in STREAMS:
            open(os.path.join(tdir, name), "ab").close()
        t = Trial(tid, tdir)
        warm = self.warm.fork(msg) if msg.get("warm") else None
        t.child, t.pipe = fork_waiter(msg, warm)
        self.trials[tid] = t

    def do_follow(self, msg):
        tid, tdir = msg["id"], msg["dir"]
        t = Trial(tid, tdir, msg.get("off") or (0, 0, 0))
        info = read_json(os.path.join(tdir, "pid.json"))
        done = os.path.exists(os.path.join(tdir, "exit.json"))
        if info is None and not done:
            self.send(ev="reply", req=msg["req"], state="absent")
            return
        if info is not None:
            t.pid, t.pgid = info["pid"], info["pgid"]
            t.waiter_pid, t.waiter_start = info.get("waiter"), info.get("waiter_start")
        if done:
            state = "exited"
        elif same_process(t.waiter_pid, t.waiter_start):
            state = "running"
        elif t.pgid and group_alive(t.pgid):
            state, t.watch_group = "running", True
        else:
            self.send(ev="reply", req=msg["req"], state="lost", pid=t.pid, pgid=t.pgid)
            return
        self.trials[tid] = t
        code = (read_json(os.path.join(tdir, "exit.json")) or {}).get("code") if done else None
        self.send(ev="reply", req=msg["req"], state=state, pid=t.pid, pgid=t.pgid, code=code)

    def do_kill(self, msg):
        t = self.trials.get(msg["id"])
        if t is None:
            return
        grace = float(msg.get("grace") or 5.0)
        if t.pgid is None:
            t.kill_grace = grace
            return
        self._kill(t, grace)

    def _kill(self, t, grace):
        t.kill_tree = descendants(t.pid)
        signal_tree(t.pgid, t.kill_tree, signal.SIGTERM)
        t.kill_at = time.time() + grace

    def do_ports(self, msg):
        """``n`` distinct ports free here now (for a distributed trial's processes)."""
        socks = []
        try:
            for _ in range(int(msg["n"])):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.bind(("", 0))
                socks.append(sock)
            self.send(ev="reply", req=msg["req"], ports=[sock.getsockname()[1] for sock in socks])
        finally:
            for sock in socks:
                sock.close()

    def do_listen(self, msg):
        """Listen on a free port for ``hold`` seconds (the kernel completes connections: nothing is accepted), so
        that other machines can test they reach this one (``probe``)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("", 0))
        sock.listen(16)
        self.listeners.append((time.time() + float(msg.get("hold", 30)), sock))
        self.send(ev="reply", req=msg["req"], port=sock.getsockname()[1])

    def do_probe(self, msg):
        """Whether a TCP connection to host:port succeeds from here within ``timeout`` seconds."""
        try:
            socket.create_connection((msg["host"], int(msg["port"])), timeout=float(msg.get("timeout", 3))).close()
            self.send(ev="reply", req=msg["req"], ok=True)
        except OSError as exc:
            self.send(ev="reply", req=msg["req"], ok=False, reason=exc.strerror or str(exc) or type(exc).__name__)

    def do_cleanup(self, msg):
        """A dead engine's leftover: kill group ``pgid`` if one of its processes is trial ``id``."""
        pgid, tid = msg.get("pgid"), msg["id"]
        killed = False
        if pgid:
            for pid, _, g, state in process_table():
                if g != pgid or state == "Z":
                    continue
                try:
                    with open("/proc/%d/environ" % pid, "rb") as fh:
                        env = fh.read().split(b"\0")
                except OSError:
                    continue
                if ("HPO_TRIAL_ID=%s" % tid).encode() in env:
                    kill_tree(pid, pgid, 1.0)
                    killed = True
                    break
        self.send(ev="reply", req=msg["req"], killed=killed)

    # the loop
    def pump(self, t):
        """Send the new bytes of the trial's files; True if there were any."""
        moved = False
        for i, name in enumerate(STREAMS):
            try:
                with open(os.path.join(t.dir, name), "rb") as fh:
                    fh.seek(t.off[i])
                    while True:
                        data = fh.read(CHUNK)
                        if not data:
                            break
                        self.send(ev="data", id=t.id, s=i, off=t.off[i], d=data.decode("latin-1"))
                        t.off[i] += len(data)
                        moved = True
            except OSError:
                continue
        return moved

    def finished(self, t):
        """The trial's final status, or None while it runs."""
        info = read_json(os.path.join(t.dir, "exit.json"))
        if info is not None:
            return info
        if t.child is not None:
            if not t.waiter_gone:
                return None
            return {"code": None, "error": "its monitor process ended without an exit status"}
        if t.watch_group:
            if group_alive(t.pgid):
                return None
            return {"code": None, "unknown": True}
        if same_process(t.waiter_pid, t.waiter_start):
            return None
        info = read_json(os.path.join(t.dir, "exit.json"))  # written just before the waiter exited
        return info if info is not None else {"code": None, "lost": "its processes ended without an exit status"}

    def on_pipe(self, t):
        try:
            data = os.read(t.pipe, 4096)
        except OSError:
            data = b""
        if data:
            t.pipe_buf += data
            if t.pid is None and b"\n" in t.pipe_buf:
                t.pid = t.pgid = int(t.pipe_buf.split(b"\n", 1)[0])
                self.send(ev="started", id=t.id, pid=t.pid, pgid=t.pgid)
                if t.kill_grace is not None:
                    self._kill(t, t.kill_grace)
            return
        os.close(t.pipe)
        t.pipe = None
        try:
            os.waitpid(t.child, 0)
        except OSError:
            pass
        t.waiter_gone = True

    def step(self, now):
        for entry in [e for e in self.listeners if e[0] <= now]:
            entry[1].close()
            self.listeners.remove(entry)
        for t in list(self.trials.values()):
            if t.kill_at is not None and now >= t.kill_at:
                signal_tree(t.pgid, t.kill_tree + descendants(t.pid), signal.SIGKILL)
                t.kill_at = None
            self.pump(t)
            if t.pipe is not None:
                continue
            status = self.finished(t)
            if status is None:
                continue
            self.pump(t)
            status.update(ev="exit", id=t.id, off=t.off)
            self.send(**status)
            del self.trials[t.id]

    def handle(self, line):
        msg = json.loads(line)
        op = msg.get("op")
        try:
            getattr(self, "do_" + op)(msg)
        except Exception as exc:  # noqa: BLE001 - reported, the agent goes on
            if "req" in msg:
                self.send(ev="reply", req=msg["req"], error="%s: %s" % (type(exc).__name__, exc))
            elif "id" in msg:
                self.send(ev="exit", id=msg["id"], code=None, error="%s: %s" % (type(exc).__name__, exc))

    def serve(self, in_fd=0):
        while True:
            pipes = {t.pipe: t for t in self.trials.values() if t.pipe is not None}
            timeout = POLL if self.trials else None
            try:
                ready, _, _ = select.select([in_fd] + list(pipes), [], [], timeout)
            except InterruptedError:
                continue
            if in_fd in ready:
                data = os.read(in_fd, CHUNK)
                if not data:
                    return
                self.buf += data
                *lines, self.buf = self.buf.split(b"\n")
                for line in lines:
                    if line.strip():
                        self.handle(line)
            for fd in ready:
                if fd in pipes:
                    self.on_pipe(pipes[fd])
            self.step(time.time())
            self.flush()


def main(argv):
    if len(argv) >= 2 and argv[1] == "serve":
        try:
            Agent().serve()
        except (BrokenPipeError, ConnectionResetError, KeyboardInterrupt):
            pass
        return 0
    sys.stderr.write("usage: agent.py serve\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
