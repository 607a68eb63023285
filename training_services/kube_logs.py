"""A Kubernetes trial's copy of its pods' logs, and how far each pod's log has been read.

The service follows each pod's log with ``timestamps=true``.  Every line read is appended (without its
timestamp) to the trial's ``stdout.log``; the position reached in each pod's log (the last timestamp, how many
lines carried it, how many intermediate results the pod printed) is appended as a JSON line to
:data:`POSITION_FILE` after the log copy is flushed.  A reconnect, or a resumed engine, asks for the log again
``sinceTime`` that second (the API server filters by whole second) and drops the lines it already has.  A crash
between the flush and the position line repeats a few lines of the copy; results are never repeated (the
service counts them against the store).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["PodLog", "TrialLog", "POSITION_FILE", "timestamp_key"]

log = logging.getLogger("hpo.kubernetes")

POSITION_FILE = ".kube-log-position.json"
SAVE_EVERY = 1.0  # seconds between position lines while a log streams


@dataclass
class PodLog:
    """Where the reading of one pod's log stands."""

    pod: str
    last: tuple[str, int] = ("", -1)   # (seconds part 'YYYY-MM-DDTHH:MM:SS', nanoseconds) of the last line
    at_last: int = 0                   # lines read that carried that timestamp
    seen: int = 0                      # intermediate results this pod printed
    complete: bool = False             # read to the end of its container's output
    index: int | None = None           # a distributed trial's pod: its process (JOB_COMPLETION_INDEX) ...
    prefix: bytes = b""                # ... its lines go to the merged log as [role-index] ...
    copy: Any = None                   # ... and as they are to the process's own stdout.log (an open file)
    task: asyncio.Task[None] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def since(self) -> tuple[str | None, int]:
        """(``sinceTime`` to ask for, lines of that timestamp to drop again), or (None, 0) from the start."""
        return (self.last[0] + "Z", self.at_last) if self.last[0] else (None, 0)


class TrialLog:
    """``stdout.log`` of one trial and the positions in its pods' logs (see the module docstring)."""

    def __init__(self, trial_dir: Path, trial_id: str, resumed: bool = False) -> None:
        """``resumed``: the trial was running before the engine restarted (its pods' positions may be saved)."""
        self.trial_dir, self.trial_id, self.resumed = Path(trial_dir), trial_id, resumed
        self.pods: dict[str, PodLog] = {}
        self._file: Any = open(os.path.join(trial_dir, "stdout.log"), "ab")
        self._saved: float | None = None  # when the positions were last saved (the first line starts the clock)
        self._dirty = False

    def pod(self, name: str) -> PodLog:
        """The position in pod ``name``'s log (as last saved, if the log was read before a restart)."""
        saved = None
        try:  # the last complete line that names the pod wins
            for line in (self.trial_dir / POSITION_FILE).read_text().splitlines() if self.resumed else ():
                try:
                    saved = json.loads(line).get(name, saved)
                except ValueError:
                    continue
        except OSError:
            pass
        podlog = self.pods[name] = PodLog(name)
        if isinstance(saved, dict):
            podlog.last = (str(saved.get("second", "")), int(saved.get("nanos", -1)))
            podlog.at_last, podlog.seen = int(saved.get("at_last", 0)), int(saved.get("seen", 0))
        return podlog

    def accept(self, podlog: PodLog, line: bytes, skip: int) -> tuple[bytes | None, int]:
        """Take one timestamped line of ``podlog``'s log: (its text, copied to stdout.log, or None if it was read
        before, and the number of lines of the same timestamp still to drop)."""
        stamp, _, text = line.partition(b" ")
        key = timestamp_key(stamp)
        if key is None:  # not a timestamped line: keep it whole
            text = line
        elif key < podlog.last:
            return None, skip
        elif key == podlog.last:
            if skip > 0:
                return None, skip - 1
            podlog.at_last += 1
        else:
            podlog.last, podlog.at_last, skip = key, 1, 0
        if text.endswith(b"\r"):
            text = text[:-1]
        self._dirty = True
        self._write(podlog.prefix + text)
        if podlog.copy is not None:
            try:
                podlog.copy.write(text + b"\n")
            except OSError as exc:
                log.warning("trial %s: %s: %s", self.trial_id, podlog.copy.name, exc)
        return text, skip

    def note(self, text: str) -> None:
        """A line of hpo's own in the copy (a pod replaced, the engine restarted)."""
        self._write(text.encode())

    def _write(self, text: bytes) -> None:
        if self._file is not None:
            try:
                self._file.write(text + b"\n")
            except OSError as exc:
                log.warning("trial %s: stdout.log: %s", self.trial_id, exc)

    def save(self, force: bool = False) -> None:
        """Flush the copy, then append the positions (if they moved; at most every SAVE_EVERY s, the first a second
        into the log, unless ``force``): a log read whole within its first second costs no write."""
        now = time.monotonic()
        if not force:
            if self._saved is None:
                self._saved = now
            if now - self._saved < SAVE_EVERY:
                return
        if not self._dirty:
            return
        self._saved, self._dirty = now, False
        try:
            if self._file is not None:
                self._file.flush()
            for podlog in self.pods.values():
                if podlog.copy is not None:
                    podlog.copy.flush()
            data = {p.pod: {"second": p.last[0], "nanos": p.last[1], "at_last": p.at_last, "seen": p.seen}
                    for p in self.pods.values()}
            with open(self.trial_dir / POSITION_FILE, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(data, separators=(",", ":")) + "\n")
        except OSError as exc:
            log.warning("trial %s: cannot save the log position: %s", self.trial_id, exc)

    def close(self) -> None:
        """Flush and close the copies (the trial has ended: no position is needed any more)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        for podlog in self.pods.values():
            if podlog.copy is not None:
                podlog.copy.close()


def timestamp_key(stamp: bytes) -> tuple[str, int] | None:
    """('YYYY-MM-DDTHH:MM:SS', nanoseconds) of an RFC 3339 log timestamp, or None if it is not one."""
    text = stamp.decode("ascii", "replace")
    if len(text) < 20 or text[10:11] != "T" or not text.endswith("Z"):
        return None
    second, _, fraction = text[:-1].partition(".")
    if len(second) != 19 or (fraction and not fraction.isdigit()):
        return None
    return second, int(fraction.ljust(9, "0")[:9]) if fraction else 0
