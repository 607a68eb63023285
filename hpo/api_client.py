"""A small client for a running experiment's JSON API (stdlib only; used by connect(), the CLI and hpo.client)."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["ApiClient", "ApiError"]


class ApiError(RuntimeError):
    """The API refused a request; the message is the server's one-line reason."""


class ApiClient:
    def __init__(self, host: str, port: int, token: str | None, timeout: float = 30.0) -> None:
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        self.base = f"http://{host}:{port}/api/v1"
        self.token = token
        self.timeout = timeout

    @classmethod
    def for_experiment(cls, directory: str | Path, info: dict[str, Any], timeout: float = 15.0) -> ApiClient:
        """A client on the engine of the experiment in ``directory`` whose store row is ``info`` (host, port);
        the token is the experiment's ``.token`` file (none if it cannot be read)."""
        try:
            token: str | None = (Path(directory) / ".token").read_text().strip()
        except OSError:
            token = None
        return cls(info.get("host") or "127.0.0.1", info["port"], token, timeout)

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise ApiError(exc.read().decode("utf-8", "replace").strip() or f"HTTP {exc.code}") from None
        except urllib.error.URLError as exc:
            raise ApiError(f"cannot reach the experiment at {self.base}: {exc.reason}") from None

    def get(self, path: str) -> Any:
        return self._request("GET", path)

    def post(self, path: str, body: Any = None) -> Any:
        return self._request("POST", path, body if body is not None else {})

    def patch(self, path: str, body: Any) -> Any:
        return self._request("PATCH", path, body)

    def pause(self) -> None:
        """Pause the experiment: no new trials are launched, running ones continue."""
        self.post("/experiment/pause")

    def activate(self) -> None:
        """Launch trials again after :meth:`pause`."""
        self.post("/experiment/activate")
