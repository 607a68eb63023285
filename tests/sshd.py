"""Real OpenSSH servers for the remote training-service tests (and ``benchmarks/orchestration.py --remote``).

Each :class:`SshServer` is Debian's ``/usr/sbin/sshd`` run in the foreground as a child process that
the caller owns: loopback only, its own ed25519 host key, key-only authentication (passwords can
be enabled for one test), ``UsePAM no``.  See ``/work/shared/infra/ssh-test-server.md``.

* :meth:`SshServer.kill` drops every connection (the listener and the per-connection ``sshd``
  processes; nothing they started), :meth:`SshServer.start` brings it back on the same port.
* :func:`create_user` / :func:`remove_user`: a second login (root only) so two "hosts" have separate
  users, created for a test run and deleted after it.
* :func:`client_key` makes a client key pair (optionally with a passphrase).

Plain classes, usable outside pytest; :func:`unavailable` says why servers cannot run here.
"""
from __future__ import annotations

import atexit
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psutil

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
SECOND_USER = "hpo-remote-b"


def unavailable() -> str | None:
    """Why real sshd servers cannot run here, or None.  In CI they must run: nothing is skipped there."""
    if os.environ.get("CI"):
        return None
    if not os.path.exists(SSHD):
        return f"{SSHD} not installed (apt-get install openssh-server; .ci/run does it)"
    if not os.path.exists(SSH_KEYGEN):
        return "ssh-keygen not installed"
    if os.getuid() != 0 and not os.path.isdir("/run/sshd"):
        return "sshd needs its privilege-separation folder /run/sshd, which only root can create"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def world_dir(prefix: str) -> Path:
    """A fresh folder under /tmp that other users can traverse (sshd reads authorized_keys as the user)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def client_key(directory: Path, name: str = "id_ed25519", passphrase: str = "") -> Path:
    """A new ed25519 key pair ``directory/name`` (+ ``.pub``); returns the private key's path."""
    path = directory / name
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", passphrase, "-C", name, "-f", str(path)],
                   check=True, stdin=subprocess.DEVNULL)
    return path


def create_user(name: str = SECOND_USER) -> pwd.struct_passwd:
    """A new local login ``name`` with a home folder (root only); :func:`remove_user` deletes both.

    A login of that name left by an earlier, interrupted run is removed first, so the test run owns it."""
    remove_user(name)
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], check=True, capture_output=True)
    # useradd leaves the account locked ('!'), which sshd refuses under UsePAM no
    subprocess.run(["usermod", "-p", "*", name], check=True, capture_output=True)
    return pwd.getpwnam(name)


def remove_user(name: str = SECOND_USER) -> None:
    """Delete login ``name``, its processes and its home folder, if it exists."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        return
    subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
    subprocess.run(["userdel", "-r", "-f", name], capture_output=True)


def set_password(user: str, password: str) -> None:
    subprocess.run(["chpasswd"], input=f"{user}:{password}\n", text=True, check=True, capture_output=True)


class SshServer:
    """One sshd on 127.0.0.1:``port`` that accepts ``authorized`` public keys for ``user``.

    Args:
        workdir: folder for its config, host key, authorized_keys and log (made traversable).
        authorized: public key files (``.pub``) accepted for login.
        user: the login to use; defaults to the current user.
        password_auth: also accept passwords.
    """

    def __init__(self, workdir: Path, authorized: list[Path], user: str | None = None,
                 password_auth: bool = False) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)
        self.user = user or pwd.getpwuid(os.getuid()).pw_name
        self.host = "127.0.0.1"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.host_key = self.workdir / "ssh_host_ed25519_key"
        if not self.host_key.exists():
            subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", str(self.host_key)], check=True)
        self.authorized_keys = self.workdir / "authorized_keys"
        self.authorized_keys.write_text("".join(Path(f).read_text() for f in authorized))
        self.authorized_keys.chmod(0o644)
        self.log = self.workdir / "sshd.log"
        self.config = self.workdir / "sshd_config"
        self.config.write_text("\n".join([
            f"Port {self.port}", f"ListenAddress {self.host}", f"HostKey {self.host_key}", "PidFile none",
            f"AuthorizedKeysFile {self.authorized_keys}", "PubkeyAuthentication yes",
            f"PasswordAuthentication {'yes' if password_auth else 'no'}", "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password", "UsePAM no", "StrictModes no", "Subsystem sftp internal-sftp",
            "MaxSessions 50", "MaxStartups 50:30:100", "LogLevel ERROR", "",
        ]))
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        check = subprocess.run([SSHD, "-t", "-f", str(self.config)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"sshd rejected {self.config}: {check.stderr.strip()}")
        _live.add(self)

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> "SshServer":
        """Start listening on ``port`` (the same port after a :meth:`kill`)."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        deadline = time.monotonic() + timeout
        while True:
            self.proc = subprocess.Popen([SSHD, "-D", "-f", str(self.config), "-E", str(self.log)],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
            while time.monotonic() < deadline and self.proc.poll() is None:
                if self.accepts():
                    return self
                time.sleep(0.01)
            if self.proc.poll() is None or time.monotonic() >= deadline:
                break
            time.sleep(0.1)  # the port may still be held by a dying instance: try again
        self.kill()
        raise RuntimeError(f"sshd did not start on {self.host}:{self.port}; see {self.log}: "
                           f"{self.log.read_text()[-500:] if self.log.exists() else ''}")

    def accepts(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def sshd_processes(self) -> list[psutil.Process]:
        """The listener and every per-connection sshd process under it (not what they started)."""
        if self.proc is None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root] + root.children(recursive=True)
        except psutil.Error:
            return []
        out = []
        for p in procs:
            try:
                if p.name().startswith("sshd"):
                    out.append(p)
            except psutil.Error:
                pass
        return out

    def kill(self) -> None:
        """SIGKILL the listener and all its sshd session processes: every connection drops at once."""
        for p in self.sshd_processes():
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def stop(self) -> None:
        self.kill()
        _live.discard(self)

    # -- what clients need ----------------------------------------------------------------------------
    def known_hosts_line(self) -> str:
        """This server's line for an OpenSSH known_hosts file."""
        kind, blob = (self.workdir / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        return f"[{self.host}]:{self.port} {kind} {blob}\n"

    def machine(self, key: Path | None = None, **extra: object) -> dict[str, object]:
        """A ``machine_list`` entry for this server."""
        entry: dict[str, object] = {"host": self.host, "port": self.port, "user": self.user}
        if key is not None:
            entry["ssh_key_file"] = str(key)
        entry.update(extra)
        return entry


_live: set[SshServer] = set()


@atexit.register
def _stop_all() -> None:
    for server in list(_live):
        try:
            server.stop()
        except Exception:
            pass


class SharedServer:
    """One lazily started server per process for the current user (the contract suite's factory)."""

    _instance: "SharedServer | None" = None

    def __init__(self) -> None:
        self.dir = world_dir("hpo-sshd-shared-")
        self.key = client_key(self.dir, "client_key")
        self.server = SshServer(self.dir / "server", [self.key.with_suffix(".pub")]).start()
        self.known_hosts = self.dir / "known_hosts"
        self.known_hosts.write_text(self.server.known_hosts_line())
        atexit.register(self.close)

    def close(self) -> None:
        self.server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    @classmethod
    def get(cls) -> "SharedServer":
        if cls._instance is None or not cls._instance.server.accepts():
            cls._instance = cls()
        return cls._instance


