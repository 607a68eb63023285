"""An experiment's log as Gradient numbers it, read incrementally from the trial folders.

The log is every run (trial) of the experiment in order: its ``stdout.log`` as it is written (a multi-node run's
is merged, each line prefixed ``[role-index] ``) and, once the run has ended, its ``stderr.log``.  Line 1 is the
first line; a line is numbered once, so a follower never repeats one.  A run's files are complete once the store
records its end (the training services close them first), so its end is read before its files.
"""
from __future__ import annotations

from pathlib import Path

from hpo.storage import ACTIVE_STATES, ExperimentStore

__all__ = ["LogReader"]

_STREAMS = ("stdout.log", "stderr.log")


class LogReader:
    """Reads the lines appended to an experiment's log since the last :meth:`read`."""

    def __init__(self, directory: Path, store: ExperimentStore) -> None:
        self.directory, self.store = Path(directory), store
        self.lines = 0  # lines read so far: the last one's number
        self._trial, self._stream, self._offset, self._partial = 0, 0, 0, b""

    def read(self) -> list[str]:
        """The complete lines written since the last call (a file's last line without a newline once it is
        complete)."""
        out: list[str] = []
        trials = self.store.trials()
        while self._trial < len(trials):
            rec = trials[self._trial]
            ended = rec["status"] not in ACTIVE_STATES  # stderr is read only once the run has ended
            out += self._read_file(self.directory / "trials" / rec["id"] / _STREAMS[self._stream])
            if not ended:
                break
            if self._partial:
                out.append(self._partial.decode("utf-8", "replace").rstrip("\r"))
            self._partial, self._offset = b"", 0
            self._trial, self._stream = (self._trial, 1) if self._stream == 0 else (self._trial + 1, 0)
        self.lines += len(out)
        return out

    def _read_file(self, path: Path) -> list[str]:
        try:
            with open(path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:  # not launched (yet), or stopped before it was
            return []
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        return [line.decode("utf-8", "replace").rstrip("\r") for line in lines]
