"""``V1IO``: one typed input or output of a component, with Polyaxon's rules (``validate_io``)."""
from __future__ import annotations

import re
import warnings
from typing import Any

from pydantic import model_validator

from hpo.polyaxon.base import V1Model
from hpo.polyaxon.errors import PolyaxonError, show
from hpo.polyaxon.types import OPAQUE_TYPES, TYPES, parse_value

__all__ = ["V1IO", "RESERVED_NAMES"]

RESERVED_NAMES = ("globals", "params", "connections", "inputs", "outputs")
_SLUG = re.compile(r"^[A-Za-z0-9_-]+$")


class V1IO(V1Model):
    """An input or output.  A required input (``is_optional`` false) must have no default ``value``; ``is_flag``
    is for ``bool`` only; the default and ``options`` are parsed against ``type`` when the IO is built."""

    name: str
    description: str | None = None
    type: str | None = None
    value: Any = None
    is_optional: bool | None = None
    is_list: bool | None = None
    is_flag: bool | None = None
    arg_format: str | None = None
    connection: str | None = None
    to_init: bool | None = None
    to_env: str | None = None
    delay_validation: bool | None = None
    options: list[Any] | None = None

    @model_validator(mode="after")
    def _rules(self) -> V1IO:
        if not _SLUG.match(self.name) or self.name in RESERVED_NAMES:
            raise PolyaxonError(f"name {self.name!r}: expected a slug (letters, digits, '-', '_'), not one of "
                                f"{', '.join(RESERVED_NAMES)}")
        kind = self.type or "any"
        if kind not in TYPES and kind not in OPAQUE_TYPES:
            warnings.warn(f"io {self.name!r}: type {kind!r} is not one hpo knows; its values are kept as given",
                          stacklevel=2)
        elif kind in OPAQUE_TYPES:
            warnings.warn(f"io {self.name!r}: type {kind!r} has no meaning for hpo; its values are kept as given",
                          stacklevel=2)
        if self.is_flag and kind != "bool":
            raise PolyaxonError(f"io {self.name!r}: isFlag is only valid for type bool, got type {kind!r}")
        if self.value is not None and not self.is_optional:
            raise PolyaxonError(f"io {self.name!r}: a required input cannot have a default value "
                                f"(got value {show(self.value)}); set isOptional: true or remove the value")
        try:
            if self.options is not None:
                self.__dict__["options"] = [self.parse(o) for o in self.options]
            if self.value is not None:
                self.__dict__["value"] = self.check(self.value)
        except PolyaxonError as e:
            raise PolyaxonError(f"io {self.name!r}: {e}") from None
        return self

    @property
    def kind(self) -> str:
        return self.type if self.type in TYPES else "any"

    def parse(self, value: Any, text: bool = False) -> Any:
        """``value`` parsed against this IO's type (raises PolyaxonError without a location)."""
        return parse_value(self.kind, value, is_list=bool(self.is_list), text=text)

    def check(self, value: Any, text: bool = False) -> Any:
        """Parse ``value`` and check it is one of ``options``."""
        value = self.parse(value, text)
        if self.options is not None and value is not None:
            items = value if self.is_list else [value]
            bad = [v for v in items if v not in self.options]
            if bad:
                raise PolyaxonError(f"got {show(bad[0])}, expected one of {show(self.options)}")
        return value

    @property
    def required(self) -> bool:
        return not self.is_optional
