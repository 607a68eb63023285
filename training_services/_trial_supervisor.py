"""Per-trial supervisor of the local training service: runs one trial command and ends its whole process tree.

The engine starts ``python -I -S _trial_supervisor.py GRACE LIFELINE_FD COMMAND``.  Stdlib only, importing
nothing from hpo and as little as it can: it starts about as fast as a bare interpreter.  Contract:

* runs ``/bin/sh -c COMMAND`` in its own process group, with this process's environment, stdin, stdout,
  stderr and other inheritable descriptors (the report pipe) unchanged;
* is a child subreaper where the kernel allows it (Linux), so every descendant of the trial, even one that
  called ``setsid`` and forked twice or cleared its environment, stays below this process;
* on SIGTERM, or at end of file on ``LIFELINE_FD`` (the engine holds its write end: EOF means the engine
  died), SIGTERMs the command's group and every descendant, waits up to GRACE seconds for all of them to
  exit, then SIGKILLs whatever is left, until nothing is (processes spawned during the grace included);
* when the command exits by itself, ends what it left behind the same way, with a grace of at most 1 s;
* exits as the command did: with its exit code, or killed by the same signal.

The warm-start zygote (``_zygote.py``) runs the same loop, :func:`supervise`, in a forked child, with a forked
trial in place of the ``/bin/sh`` command.
"""
import _signal as signal  # the C module behind `signal`: the same functions, without its 10 ms enum import
import os
import select
import sys
import time

LEFTOVER_GRACE = 1.0
PR_SET_CHILD_SUBREAPER = 36


def _become_subreaper() -> bool:
    """Make orphaned descendants children of this process; False where the system does not allow it."""
    try:
        import ctypes
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, ctypes.c_ulong(1), ctypes.c_ulong(0),
                                                       ctypes.c_ulong(0), ctypes.c_ulong(0)) == 0
    except (ImportError, OSError, AttributeError):  # no ctypes, or no libc prctl (not Linux)
        return False


class Supervisor:
    """The command's process (``pid``, also its process group) and how to end everything below this process."""

    def __init__(self, pid: int, wake_fd: int, subreaper: bool) -> None:
        self.pid, self.wake_fd, self.subreaper = pid, wake_fd, subreaper
        self.status: int | None = None  # the command's wait status, once reaped

    def reap(self) -> bool:
        """Collect exited children; False once this process has no child left."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return False
            if pid == 0:
                return True
            if pid == self.pid:
                self.status = status

    def left(self) -> list[int]:
        """The trial's live processes: every descendant, and (without the subreaper) the command's group;
        empty only once the command itself has been reaped."""
        if not self.reap() and self.subreaper:
            return []  # with the subreaper, no child means no descendant
        try:
            names = os.listdir("/proc")
        except FileNotFoundError:  # not Linux: the command's process group is all this process can see
            return [self.pid] if self.status is None or _group_exists(self.pid) else []
        me, children, group = os.getpid(), {}, []
        for name in names:
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as fh:
                    stat = fh.read()
            except OSError:
                continue
            state, ppid, pgrp = stat[stat.rindex(b")") + 2:].split(maxsplit=3)[:3]
            if state in (b"Z", b"X"):
                continue
            children.setdefault(int(ppid), []).append(int(name))
            if int(pgrp) == self.pid:
                group.append(int(name))
        found, todo = set(group), [me]
        while todo:
            for child in children.get(todo.pop(), ()):
                if child not in found:
                    found.add(child)
                    todo.append(child)
        found.discard(me)
        if self.status is None:
            found.add(self.pid)  # exited (a zombie) but not reaped yet
        return list(found)

    def signal(self, pids: list[int], sig: int) -> None:
        for kill, target in [(os.killpg, self.pid)] + [(os.kill, pid) for pid in pids]:
            try:
                kill(target, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def wait(self, timeout: float) -> None:
        """Sleep until a signal arrives (a child exited) or ``timeout`` seconds pass."""
        if select.select([self.wake_fd], [], [], max(timeout, 0.0))[0]:
            os.read(self.wake_fd, 512)

    def end(self, grace: float) -> None:
        """SIGTERM every process of the trial, SIGKILL what is left after ``grace`` s, return once none is."""
        pids = self.left()
        if not pids:
            return
        self.signal(pids, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            self.wait(min(0.05, deadline - time.monotonic()))
            pids = self.left()
        while pids:
            self.signal(pids, signal.SIGKILL)
            self.wait(0.01)
            pids = self.left()


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except OSError:
        return False
    return True


def _exit_as(status: int) -> None:
    """Exit with the command's exit code, or die of the signal that killed it."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        import resource
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))  # no core file
        if sig != signal.SIGKILL:
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)  # only if that signal does not end a process
    os._exit(os.waitstatus_to_exitcode(status))


def supervise(grace: float, lifeline: int, start) -> int:
    """Start the command with ``start(private_fds)`` (it returns the pid of a process that is the leader of its own
    group; a forked child must close ``private_fds``), supervise it as the module says; return its wait status."""
    os.set_inheritable(lifeline, False)
    subreaper = _become_subreaper()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    for sig in (signal.SIGTERM, signal.SIGCHLD):  # handled through the wakeup fd
        signal.signal(sig, lambda signum, frame: None)
    sup = Supervisor(start((wake_r, wake_w, lifeline)), wake_r, subreaper)
    stop, watched = False, [wake_r, lifeline]
    while sup.reap() and sup.status is None and not stop:
        ready = select.select(watched, [], [])[0]
        if wake_r in ready:
            stop = signal.SIGTERM in os.read(wake_r, 512)
        if lifeline in ready and not os.read(lifeline, 512):
            stop = True  # the engine is gone
    sup.end(grace if stop else min(grace, LEFTOVER_GRACE))
    assert sup.status is not None
    return sup.status


def main(grace: float, lifeline: int, command: str) -> None:
    def start(_private_fds: tuple[int, ...]) -> int:  # they are close-on-exec
        return os.posix_spawn("/bin/sh", ["/bin/sh", "-c", command], os.environ, setpgroup=0,
                              setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))

    _exit_as(supervise(grace, lifeline, start))


if __name__ == "__main__":
    main(float(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
