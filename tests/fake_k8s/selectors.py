"""Label and field selectors with the Kubernetes grammar.

Contract: ``parse_label_selector(text)`` returns a predicate over a labels dict; it raises
``ValueError`` for a malformed selector. Supported: ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``,
``k notin (a,b)``, ``k`` (exists), ``!k`` (does not exist); requirements joined by commas (AND).
``parse_field_selector`` supports ``metadata.name``, ``metadata.namespace`` and ``status.phase``
with ``=``, ``==`` and ``!=``.
"""
from __future__ import annotations

import re
from typing import Any, Callable

Predicate = Callable[[dict[str, Any]], bool]

_KEY = r"(?:[A-Za-z0-9][-A-Za-z0-9_.]*/)?[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_SET_RE = re.compile(rf"^\s*({_KEY})\s+(in|notin)\s*\(([^()]*)\)\s*")
_EQ_RE = re.compile(rf"^\s*({_KEY})\s*(==|!=|=)\s*({_VALUE})\s*")
_EXISTS_RE = re.compile(rf"^\s*(!?)\s*({_KEY})\s*")


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ValueError("unbalanced parentheses")
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth:
        raise ValueError("unbalanced parentheses")
    parts.append("".join(current))
    return parts


def _requirement(text: str) -> Callable[[dict[str, str]], bool]:
    m = _SET_RE.fullmatch(text)
    if m:
        key, op, raw = m.group(1), m.group(2), m.group(3)
        values = {v.strip() for v in raw.split(",")}
        if any(not re.fullmatch(_VALUE, v) for v in values) or values == {""}:
            raise ValueError(f"invalid values in {text!r}")
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    m = _EQ_RE.fullmatch(text)
    if m:
        key, op, value = m.groups()
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    m = _EXISTS_RE.fullmatch(text)
    if m:
        neg, key = m.groups()
        if neg:
            return lambda labels: key not in labels
        return lambda labels: key in labels
    raise ValueError(f"unable to parse requirement: {text.strip()!r}")


def parse_label_selector(text: str | None) -> Predicate:
    """Return a predicate over an object's ``metadata.labels``; raise ValueError when malformed."""
    if not text or not text.strip():
        return lambda obj: True
    reqs = [_requirement(part) for part in _split_top_level(text)]

    def match(obj: dict[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(r(labels) for r in reqs)
    return match


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """matchLabels-style equality selector (used by Services)."""
    return all(labels.get(k) == v for k, v in selector.items())


_FIELDS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "metadata.name": lambda o: o.get("metadata", {}).get("name"),
    "metadata.namespace": lambda o: o.get("metadata", {}).get("namespace"),
    "status.phase": lambda o: (o.get("status") or {}).get("phase"),
    "spec.nodeName": lambda o: (o.get("spec") or {}).get("nodeName") or "",
}


def parse_field_selector(text: str | None) -> Predicate:
    """Return a predicate for a field selector; raise ValueError for unknown fields or syntax."""
    if not text or not text.strip():
        return lambda obj: True
    reqs: list[Callable[[dict[str, Any]], bool]] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*([A-Za-z.]+)\s*(==|!=|=)\s*([^,]*?)\s*", part)
        if not m or m.group(1) not in _FIELDS:
            raise ValueError(f"field label not supported: {part.strip()!r}")
        getter, op, value = _FIELDS[m.group(1)], m.group(2), m.group(3)
        if op == "!=":
            reqs.append(lambda o, g=getter, v=value: g(o) != v)
        else:
            reqs.append(lambda o, g=getter, v=value: g(o) == v)
    return lambda obj: all(r(obj) for r in reqs)
