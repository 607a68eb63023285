"""Trial command templates: ``{{ name }}`` placeholders, each replaced by a parameter's value as one shell word."""
from __future__ import annotations

import json
import re
import shlex
from typing import Any

__all__ = ["PLACEHOLDER", "render_command", "with_placeholders_as"]

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][\w.]*)\s*\}\}")


def render_command(command: str, parameters: dict[str, Any]) -> str:
    """``command`` with each ``{{ name }}`` replaced by ``parameters[name]`` (a string as is, anything else as
    JSON), shell-quoted.  KeyError naming the placeholder when the parameters lack it."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in parameters:
            raise KeyError(f"trial_command uses {{{{ {name} }}}} but the search space has no parameter {name!r}")
        v = parameters[name]
        return shlex.quote(v if isinstance(v, str) else json.dumps(v))

    return PLACEHOLDER.sub(value, command)


def with_placeholders_as(command: str, word: str) -> str:
    """``command`` with every placeholder replaced by ``word``: its shape once rendered, whatever the values."""
    return PLACEHOLDER.sub(word, command)
