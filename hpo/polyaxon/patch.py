"""Polyaxon's patch strategies over plain dicts: ``post_merge`` (default), ``pre_merge``, ``replace``, ``isnull``.

* ``post_merge``: dicts merge deeply, lists become current + new items not already there, scalars take the new value.
* ``pre_merge``: the same with the sides swapped (existing values win; lists are new + current items not there).
* ``replace``: each given key replaces the current value whole.
* ``isnull``: a key is set only where the current value is missing or null.
A null new value never overwrites.
"""
from __future__ import annotations

from typing import Any, Mapping

from hpo.polyaxon.errors import PolyaxonError

__all__ = ["patch", "STRATEGIES"]

STRATEGIES = ("post_merge", "pre_merge", "replace", "isnull")


def _merge(old: Any, new: Any, new_wins: bool) -> Any:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out = dict(old)
        for key, value in new.items():
            if value is None:
                continue
            out[key] = _merge(out[key], value, new_wins) if out.get(key) is not None else value
        return out
    if isinstance(old, list) and isinstance(new, list):
        first, second = (old, new) if new_wins else (new, old)
        return first + [item for item in second if item not in first]
    return new if new_wins else old


def patch(current: Mapping[str, Any] | None, new: Mapping[str, Any] | None, strategy: str | None = None) -> dict[str, Any]:
    """``current`` patched with ``new`` under ``strategy`` (default ``post_merge``); neither is modified."""
    strategy = strategy or "post_merge"
    if strategy not in STRATEGIES:
        raise PolyaxonError(f"patchStrategy: got {strategy!r}, expected one of {', '.join(STRATEGIES)}")
    out = dict(current or {})
    for key, value in (new or {}).items():
        if value is None:
            continue
        if strategy == "replace" or out.get(key) is None:
            out[key] = value
        elif strategy != "isnull":
            out[key] = _merge(out[key], value, strategy == "post_merge")
    return out
