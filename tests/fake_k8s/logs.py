"""Container logs as the kubelet keeps them: timestamped lines, stdout and stderr interleaved.

Contract: ``ContainerLog.render(...)`` applies the pod-log query options with the apiserver's
quirks: ``sinceTime`` compares at whole-second granularity (a reconnect from the last seen
timestamp repeats the lines of that second), ``tailLines`` and ``limitBytes`` as documented.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass, field

MAX_LINE = 16 * 1024


def format_ts(ns: int) -> str:
    """RFC 3339 with 9 fraction digits in UTC, like the kubelet's CRI log timestamps."""
    secs, frac = divmod(ns, 10**9)
    base = dt.datetime.fromtimestamp(secs, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{frac:09d}Z"


def parse_rfc3339_seconds(text: str) -> int:
    """Whole seconds since the epoch of an RFC 3339 time (fraction dropped); ValueError if bad."""
    text = text.strip().replace("z", "Z")
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    main, _, rest = text.partition(".")
    if rest:
        # drop the fraction, keep the offset
        i = 0
        while i < len(rest) and rest[i].isdigit():
            i += 1
        text = main + rest[i:]
    return int(dt.datetime.fromisoformat(text).timestamp())


@dataclass
class ContainerLog:
    """One container's log lines (timestamp ns, text without newline)."""
    lines: list[tuple[int, str]] = field(default_factory=list)
    closed: bool = False
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _partial: bytes = b""

    def feed(self, data: bytes) -> None:
        """Append raw output; complete lines are stamped now, longer ones split at 16 KiB."""
        buf = self._partial + data
        *complete, self._partial = buf.split(b"\n")
        for raw in complete:
            self._append(raw)
        while len(self._partial) > MAX_LINE:
            self._append(self._partial[:MAX_LINE])
            self._partial = self._partial[MAX_LINE:]

    def _append(self, raw: bytes) -> None:
        self.lines.append((time.time_ns(), raw.decode("utf-8", "replace")))
        self._notify()

    def close(self) -> None:
        """Flush a partial last line and end followers' streams."""
        if self._partial:
            self._append(self._partial)
            self._partial = b""
        self.closed = True
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait(self, timeout: float = 1.0) -> None:
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    def select(self, since_seconds: int | None = None, since_time: int | None = None,
               tail_lines: int | None = None) -> int:
        """Index of the first line to send."""
        start = 0
        cutoff = None
        if since_time is not None:
            cutoff = since_time * 10**9          # whole-second granularity, like the kubelet
        elif since_seconds is not None:
            cutoff = time.time_ns() - since_seconds * 10**9
        if cutoff is not None:
            while start < len(self.lines) and self.lines[start][0] < cutoff:
                start += 1
        if tail_lines is not None:
            start = max(start, len(self.lines) - tail_lines)
        return start

    @staticmethod
    def line_bytes(entry: tuple[int, str], timestamps: bool) -> bytes:
        ts, text = entry
        prefix = f"{format_ts(ts)} " if timestamps else ""
        return f"{prefix}{text}\n".encode()

    def tail_text(self, lines: int = 80, max_bytes: int = 2048) -> str:
        text = "\n".join(t for _, t in self.lines[-lines:])
        data = text.encode()[-max_bytes:]
        return data.decode("utf-8", "replace")
