"""Polyaxon v1 IO types: which names exist, and how a value (from YAML, Python or a ``-P`` string) is parsed."""
from __future__ import annotations

import datetime
import json
import uuid as _uuid
from typing import Any

from hpo.polyaxon.errors import PolyaxonError, show

__all__ = ["TYPES", "OPAQUE_TYPES", "parse_value", "is_known_type"]

TYPES = ("any", "int", "float", "bool", "str", "dict", "list", "path", "uri", "metric", "date", "datetime", "uuid")
# v1 types hpo has no meaning for: values are kept as opaque strings (with a warning where the type is declared)
OPAQUE_TYPES = ("dict_of_dicts", "auth", "gcs", "s3", "wasb", "dockerfile", "file", "tensorboard", "git", "image",
                "event", "artifacts", "metadata")
_TRUE, _FALSE = ("true", "1", "yes", "y", "on"), ("false", "0", "no", "n", "off")


def is_known_type(name: str) -> bool:
    return name in TYPES


def _number(kind: str, value: Any, text: bool) -> int | float:
    if text:
        try:
            return int(value) if kind == "int" else float(value)
        except ValueError:
            raise PolyaxonError(f"got {show(value)}, expected {'an integer' if kind == 'int' else 'a number'}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PolyaxonError(f"got {show(value)}, expected {'an integer' if kind == 'int' else 'a number'}")
    if kind == "int":
        if isinstance(value, float) and not value.is_integer():
            raise PolyaxonError(f"got {show(value)}, expected an integer")
        return int(value)
    return float(value) if isinstance(value, int) else value


def _scalar(kind: str, value: Any, text: bool) -> Any:
    """One value of type ``kind``; ``text``: it came as a string from the command line."""
    if kind == "any" or kind in OPAQUE_TYPES:
        return value
    if kind in ("int", "float", "metric"):
        return _number("int" if kind == "int" else "float", value, text)
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if text and str(value).lower() in _TRUE + _FALSE:
            return str(value).lower() in _TRUE
        raise PolyaxonError(f"got {show(value)}, expected a boolean (true or false)")
    if kind in ("dict", "list"):
        if text:
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                if kind == "list":
                    value = [v.strip() for v in str(value).split(",")]
        want = dict if kind == "dict" else list
        if not isinstance(value, want):
            raise PolyaxonError(f"got {show(value)}, expected a {'mapping' if kind == 'dict' else 'list'}"
                                f"{' (JSON)' if text else ''}")
        return value
    if kind == "date":
        return _date(value, datetime.date.fromisoformat, "a date like 2024-01-31")
    if kind == "datetime":
        return _date(value, datetime.datetime.fromisoformat, "a datetime like 2024-01-31T12:00:00")
    if kind == "uuid":
        try:
            return str(_uuid.UUID(str(value)))
        except ValueError:
            raise PolyaxonError(f"got {show(value)}, expected a uuid") from None
    if not isinstance(value, str):  # str, path, uri
        raise PolyaxonError(f"got {show(value)}, expected a string")
    return value


def _date(value: Any, parse: Any, expected: str) -> str:
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    try:
        return parse(str(value)).isoformat()
    except ValueError:
        raise PolyaxonError(f"got {show(value)}, expected {expected}") from None


def parse_value(kind: str, value: Any, *, is_list: bool = False, text: bool = False) -> Any:
    """``value`` as type ``kind`` (a list of them with ``is_list``); ``text``: a ``-P`` string to convert.
    Dates come back as ISO strings (parameters travel as JSON).  Raises PolyaxonError (no location)."""
    if value is None:
        return None
    if is_list:
        if text and isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                value = [v.strip() for v in value.split(",")]
                return [_scalar(kind, v, True) for v in value]
        if not isinstance(value, list):
            raise PolyaxonError(f"got {show(value)}, expected a list of {kind}")
        return [_scalar(kind, v, False) for v in value]
    return _scalar(kind, value, text)
