"""Warm-start zygote of the local training service: imports a trial's modules once, then forks each trial.

The engine starts ``python _zygote.py CONTROL_FD`` in the trials' code directory, with the trials' common
environment, and speaks to it over ``CONTROL_FD`` (an ``AF_UNIX`` ``SOCK_SEQPACKET`` socket, one JSON object per
packet, see ``training_services/warm_start.py`` for the engine's side):

* first packet, from the engine: ``{"preload": [module, ...], "function_file": path | null}``; the zygote imports
  the modules (and loads the pickled trial function), then answers ``{"ready": true, "warnings": [...]}``, or
  ``{"ready": false, "error": ...}`` when it must not fork trials (a preloaded module initialised CUDA);
* then per trial: ``{"id", "argv", "cwd", "grace", "env_set", "env_unset"}`` with five descriptors (stdout,
  stderr, report pipe, lifeline, status pipe); the zygote forks a supervisor (``_trial_supervisor.supervise``, in
  a new session), answers ``{"id", "pid"}`` and closes its copies of the descriptors.  The supervisor forks the
  trial, supervises it exactly as the cold supervisor does, writes the trial's exit code (negative: killed by
  that signal) on the status pipe and exits as the trial did.

The trial is the forked child, made to look like a fresh ``python [-u] script.py args`` / ``python -m module
args``: its own process group, the environment, cwd, ``sys.argv``, ``sys.path[0]``, stdin (/dev/null), stdout and
stderr given in the request, default signal dispositions, fresh random seeds, ``__main__`` run by ``runpy``, exit
status as the interpreter would give it (``SystemExit``, an uncaught exception: 1, ``KeyboardInterrupt``: SIGINT),
non-daemon threads joined and ``atexit`` run before it exits.  At end of file on the control socket (the engine is
gone) the zygote exits; running trials are ended by their supervisors, whose lifelines close too.
"""
import json
import os
import select
import signal
import socket
import sys

import _trial_supervisor as supervisor

MAX_PACKET = 1 << 20
ENV_SLOT = "HPO_ZYGOTE_ENV_SLOT"  # the last variable of the zygote's environment, its value a run of "x"
MARKERS = ("HPO_EXPERIMENT_ID", "HPO_TRIAL_ID", "HPO_SEQUENCE_ID")
TRIAL_FDS = 5  # stdout, stderr, report, lifeline, status
_FUNCTION_TRIAL = "hpo.function_trial"


class Zygote:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.functions: dict[str, object] = {}  # pickled trial functions loaded up front, by file
        self.slot = _env_slot()

    def preload(self, modules: list, function_file: str | None) -> list:
        """Import ``modules`` and load the trial function; what fails is left for the trial to do (and report)."""
        import importlib
        warnings = []
        for name in modules:
            try:
                importlib.import_module(name)
            except BaseException as exc:  # the trial imports it again itself, and fails as a cold start would
                warnings.append(f"could not preload {name}: {type(exc).__name__}: {exc}")
        if function_file:
            try:
                import hpo.function_trial
                self.functions[function_file] = hpo.function_trial.load(function_file)
            except BaseException as exc:
                warnings.append(f"could not load the trial function: {type(exc).__name__}: {exc}")
        return warnings

    def serve(self) -> None:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        while True:
            ready = select.select([self.sock, wake_r], [], [])[0]
            if wake_r in ready:
                os.read(wake_r, 512)
                _reap()
            if self.sock in ready:
                try:
                    data, fds, _flags, _addr = socket.recv_fds(self.sock, MAX_PACKET, TRIAL_FDS)
                except InterruptedError:
                    continue
                if not data:
                    return  # the engine is gone
                try:
                    request = json.loads(data)
                    if len(fds) != TRIAL_FDS:
                        raise ValueError(f"expected {TRIAL_FDS} descriptors, got {len(fds)}")
                    reply = {"id": request.get("id"), "pid": self.fork(request, fds, (wake_r, wake_w))}
                except Exception as exc:
                    reply = {"id": request.get("id") if isinstance(request, dict) else None,
                             "error": f"{type(exc).__name__}: {exc}"}
                finally:
                    for fd in fds:
                        os.close(fd)
                self.sock.send(json.dumps(reply).encode())

    def fork(self, request: dict, fds: list, private: tuple) -> int:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid:
            return pid
        try:  # the supervisor
            self.sock.close()
            for fd in private:
                os.close(fd)
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.setsid()
            self.mark(request)
            stdout, stderr, report, lifeline, status = fds

            def start(supervisor_fds: tuple) -> int:
                child = os.fork()
                if child == 0:
                    try:
                        for fd in (*supervisor_fds, status):
                            os.close(fd)
                        os.setpgid(0, 0)
                        self.run_trial(request, stdout, stderr, report)
                    finally:
                        os._exit(1)  # not reached: run_trial exits
                return child

            code = supervisor.supervise(float(request["grace"]), lifeline, start)
            try:
                os.write(status, str(os.waitstatus_to_exitcode(code)).encode())
            except OSError:
                pass
            supervisor._exit_as(code)
        finally:
            os._exit(1)

    def mark(self, request: dict) -> None:
        """Put the trial's markers in this process's environment as the system shows it (/proc/PID/environ, which a
        fork does not change): they are written over the slot variable, so that whatever finds a trial's processes
        by their environment (the engine after a kill, a stop or a crash) finds this one and the trial alike."""
        if self.slot is None:
            return
        import ctypes
        address, size = self.slot
        env = request["env_set"]
        text = "1\0" + "".join(f"{key}={env[key]}\0" for key in MARKERS if key in env) + "HPO_ZYGOTE_PAD="
        data = text.encode()
        if len(data) <= size and "\0" not in "".join(env.get(key, "") for key in MARKERS):
            ctypes.memmove(address, data + b"x" * (size - len(data)), size)

    def run_trial(self, request: dict, stdout: int, stderr: int, report: int) -> None:
        """In the forked trial: become what a fresh interpreter running ``argv`` would be, run it, exit as it would."""
        _default_signals()
        devnull = os.open(os.devnull, os.O_RDONLY)
        for fd, target in ((devnull, 0), (stdout, 1), (stderr, 2)):
            if fd != target:
                os.dup2(fd, target)
                os.close(fd)
        os.set_inheritable(report, True)
        env = os.environ  # the zygote's, changed by the request's difference only (a full reset costs ~0.5 ms)
        for key in (*request["env_unset"], ENV_SLOT):
            env.pop(key, None)
        env.update(request["env_set"])
        if "HPO_REPORT_FD" in env:
            env["HPO_REPORT_FD"] = str(report)
        os.chdir(request["cwd"])
        _fresh_stdio(env)
        _reseed()
        argv = request["argv"]
        code = 0
        try:
            if argv[0] == "-m":
                sys.argv = argv[1:]
                sys.path[0] = os.getcwd()
                if argv[1] == _FUNCTION_TRIAL and len(argv) == 3 and argv[2] in self.functions:
                    import hpo.function_trial
                    hpo.function_trial.call(self.functions[argv[2]])
                else:
                    import runpy
                    runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
            else:
                import runpy
                sys.argv = list(argv)
                sys.path[0] = os.path.dirname(os.path.realpath(argv[0]))
                runpy.run_path(argv[0], run_name="__main__")
        except SystemExit as exc:
            code = _exit_code(exc)
        except KeyboardInterrupt:
            _print_exception()
            code = -signal.SIGINT
        except BaseException:
            _print_exception()
            code = 1
        _finish(code)


def _env_slot() -> tuple[int, int] | None:
    """Address and length of the slot variable's value in the environment block the process started with."""
    value = os.environ.get(ENV_SLOT)
    if not value or sys.platform != "linux":
        return None
    try:
        import ctypes
        libc = ctypes.CDLL(None)
        libc.getenv.restype = ctypes.c_void_p
        address = libc.getenv(ENV_SLOT.encode())
    except (ImportError, OSError, AttributeError):
        return None
    return (address, len(value)) if address else None


def _huge_pages() -> None:
    """Back this process's heap with transparent huge pages where the system allows it (Linux >= 6.1,
    MADV_COLLAPSE): a fork then copies one page-table entry per 2 MiB instead of 512, and forks of a zygote that
    preloaded a large library (100+ MB) cost a fraction.  Best effort: nothing changes where it is refused."""
    if sys.platform != "linux":
        return
    huge, madv_hugepage, madv_collapse = 2 << 20, 14, 25
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        with open("/proc/self/maps") as fh:
            maps = fh.read().splitlines()
    except (ImportError, OSError, AttributeError):
        return
    for line in maps:
        parts = line.split()
        if len(parts) < 5 or parts[1] != "rw-p" or (len(parts) > 5 and parts[5] != "[heap]"):
            continue  # only private anonymous memory (and the heap): not files, stacks or shared memory
        start, end = (int(x, 16) for x in parts[0].split("-"))
        start, end = -(-start // huge) * huge, end // huge * huge
        if end - start >= huge and libc.madvise(start, end - start, madv_hugepage) == 0:
            libc.madvise(start, end - start, madv_collapse)


def _reap() -> None:
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _default_signals() -> None:
    """The dispositions a fresh interpreter starts with, and no signal blocked."""
    import _signal  # `signal`'s C functions, without its enum conversions (a quarter of a millisecond per trial)
    signal.set_wakeup_fd(-1)
    for sig in range(1, _signal.NSIG):
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            if _signal.getsignal(sig) not in (_signal.SIG_DFL, None):
                _signal.signal(sig, _signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _fresh_stdio(env: dict) -> None:
    """New sys.stdin/stdout/stderr over fds 0-2, buffered as a fresh interpreter with this environment would."""
    import io
    unbuffered = bool(env.get("PYTHONUNBUFFERED")) or sys.flags.unbuffered
    encoding = env.get("PYTHONIOENCODING", "").split(":")[0] or None

    def stream(fd: int, mode: str, **kw) -> io.TextIOWrapper:
        raw = io.FileIO(fd, mode, closefd=False)
        if mode == "r":
            return io.TextIOWrapper(io.BufferedReader(raw), encoding=encoding, **kw)
        return io.TextIOWrapper(io.BufferedWriter(raw), encoding=encoding, **kw)

    tty = os.isatty(1)
    sys.stdin = sys.__stdin__ = stream(0, "r")
    sys.stdout = sys.__stdout__ = stream(1, "w", line_buffering=tty and not unbuffered, write_through=unbuffered)
    sys.stderr = sys.__stderr__ = stream(2, "w", line_buffering=True, write_through=unbuffered,
                                         errors="backslashreplace")


def _reseed() -> None:
    """Each trial gets fresh random state, as a fresh interpreter would (``random`` reseeds itself at fork)."""
    np = sys.modules.get("numpy")
    if np is not None:
        try:
            np.random.seed()
        except Exception:
            pass
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            torch.seed()
        except Exception:
            pass


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    try:
        print(exc.code, file=sys.stderr)
    except Exception:
        pass
    return 1


def _print_exception() -> None:
    """Print the exception as the interpreter would, without this module's and runpy's frames above the trial's."""
    import traceback
    kind, value, tb = sys.exc_info()
    ours = {os.path.realpath(__file__), "<frozen runpy>", getattr(sys.modules.get("runpy"), "__file__", None)}
    while tb is not None and (tb.tb_frame.f_code.co_filename in ours
                              or os.path.realpath(tb.tb_frame.f_code.co_filename) in ours):
        tb = tb.tb_next
    if value is not None:
        value.__traceback__ = tb  # what the default hook prints
    try:
        sys.excepthook(kind, value, tb)
    except Exception:
        traceback.print_exception(kind, value, tb)


def _finish(code: int) -> None:
    """What the interpreter does at exit: join non-daemon threads, run atexit, flush; then exit with ``code``."""
    import threading
    try:
        threading._shutdown()
    except Exception:
        pass
    try:
        import atexit
        atexit._run_exitfuncs()
    except Exception:
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code)


def main(control_fd: int) -> None:
    sock = socket.socket(fileno=control_fd)
    os.set_inheritable(control_fd, False)
    sys.path[0] = os.getcwd()  # like `python -m`: the code directory first, not this file's
    hello = json.loads(sock.recv(MAX_PACKET) or b"null")
    if hello is None:
        return
    zygote = Zygote(sock)
    # hpo's trial API (stdlib only) is what nearly every trial imports: always preloaded
    warnings = zygote.preload(["hpo", "hpo.trial_checkpoint"] + list(hello.get("preload") or []),
                              hello.get("function_file"))
    torch = sys.modules.get("torch")
    if torch is not None and getattr(torch.cuda, "is_initialized", lambda: False)():
        sock.send(json.dumps({"ready": False, "error": "preloading initialised CUDA in the zygote (a forked trial "
                                                      "could not use the GPU); trials start cold"}).encode())
        return
    import gc
    gc.collect()
    gc.freeze()  # the preloaded objects are never collected: a trial's collections do not copy their pages
    _huge_pages()
    sock.send(json.dumps({"ready": True, "warnings": warnings}).encode())
    zygote.serve()


if __name__ == "__main__":
    main(int(sys.argv[1]))
