"""The ``{{ ... }}`` context of a run (stdlib only: it also runs in the trial).

Names: ``{{ NAME }}`` (a param's value), ``{{ params.NAME.value }}``, ``{{ params.NAME.as_arg }}``
(``--NAME=value``; ``--NAME`` for a true flag and nothing for a false one or null; ``argFormat`` overrides),
``{{ inputs.NAME }}`` and ``{{ globals.KEY }}``.
"""
from __future__ import annotations

import json
import re
from typing import Any, Mapping

__all__ = ["render", "as_arg", "text", "GLOBAL_KEYS"]

GLOBAL_KEYS = ("owner_name", "project_name", "project_unique_name", "name", "uuid", "run_info", "iteration",
               "context_path", "artifacts_path", "run_artifacts_path", "run_outputs_path", "store_path",
               "namespace", "created_at", "compiled_at", "started_at", "cloning_kind", "is_independent")
_TEMPLATE = re.compile(r"{{\s*([A-Za-z0-9_.-]+)\s*}}")


def text(value: Any) -> str:
    """How a value is written into a command: strings as they are, null as nothing, lists and dicts as JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def as_arg(name: str, value: Any, io: Mapping[str, Any], params: Mapping[str, Any]) -> str:
    """``--name=value`` for input ``name`` (``io``: its ``is_flag`` and ``arg_format``)."""
    if io.get("arg_format"):
        return render(io["arg_format"], params, {}, where=f"argFormat of {name}")
    if value is None:
        return ""
    if io.get("is_flag"):
        return f"--{name}" if value else ""
    return f"--{name}={text(value)}"


def render(template: str, params: Mapping[str, Any], globals_: Mapping[str, Any], *,
           ios: Mapping[str, Mapping[str, Any]] | None = None, where: str = "command") -> str:
    """``template`` with each ``{{ ... }}`` replaced; KeyError naming the reference when it is unknown."""
    ios = ios or {}

    def value(match: re.Match[str]) -> str:
        ref = match.group(1)
        parts = ref.split(".")
        if len(parts) == 1 and parts[0] in params:
            return text(params[parts[0]])
        if parts[0] in ("params", "inputs") and len(parts) >= 2 and parts[1] in params:
            attr = parts[2] if len(parts) == 3 else "value"
            if len(parts) <= 3 and attr == "value":
                return text(params[parts[1]])
            if len(parts) == 3 and attr == "as_arg" and parts[0] == "params":
                return as_arg(parts[1], params[parts[1]], ios.get(parts[1], {}), params)
        if parts[0] == "globals" and len(parts) == 2 and parts[1] in globals_:
            return text(globals_[parts[1]])
        raise KeyError(f"{where}: {{{{ {ref} }}}} refers to nothing; expected an input or param name, "
                       "params.NAME.as_arg, params.NAME.value or globals.KEY")
    return _TEMPLATE.sub(value, template)
