"""Base of every V1 model: Polyaxon's camelCase or snake_case keys, unknown keys refused, one-line errors."""
from __future__ import annotations

import difflib
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

from hpo.polyaxon.errors import PolyaxonError, show

__all__ = ["V1Model", "convert_error"]


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


def _where(cls: type[BaseModel] | None, loc: tuple[Any, ...]) -> tuple[str, type[BaseModel] | None]:
    """The dotted snake_case path of a pydantic error location, and the model it ends in."""
    path, model = "", cls
    for part in loc:
        fields = model.model_fields if model is not None else {}
        name = next((n for n, f in fields.items() if part in (n, f.alias)), None)
        if name is not None:
            path += f".{name}"
            ann = fields[name].annotation
            model = next((a for a in (ann, *getattr(ann, "__args__", ())) if isinstance(a, type)
                          and issubclass(a, BaseModel)), None)
        elif isinstance(part, int):
            path += f"[{part}]"
        elif isinstance(part, str) and not part.startswith(("function-", "V1")) and "[" not in part:
            path += f".{part}"
            model = None
    return path, model


def convert_error(err: ValidationError, cls: type[BaseModel], where: str) -> PolyaxonError:
    """The first problem of a pydantic error as a one-line PolyaxonError."""
    e = err.errors(include_url=False)[0]
    loc = tuple(e["loc"])
    ctx_error = (e.get("ctx") or {}).get("error")
    if e["type"] == "extra_forbidden":
        path, model = _where(cls, loc[:-1])
        names = list(model.model_fields) if model is not None else []
        close = difflib.get_close_matches(_snake(str(loc[-1])), names, n=1)
        hint = f"did you mean {to_camel(close[0]) if close else ''!r}?" if close else \
            f"expected one of {', '.join(map(to_camel, names))}"
        problem = f"unknown key {loc[-1]!r}; {hint}"
    else:
        path, _ = _where(cls, loc)
        if isinstance(ctx_error, PolyaxonError):
            if ctx_error.problem is not None:  # a nested model's own converted error
                path, problem = path + ctx_error.path, ctx_error.problem
            else:
                problem = str(ctx_error)
        elif e["type"] == "missing":
            problem = "missing (required)"
        else:
            msg = str(ctx_error) if isinstance(ctx_error, ValueError) else e["msg"]
            problem = f"got {show(e.get('input'))}: {msg[:1].lower()}{msg[1:]}"
    at = f"{where}: {path.lstrip('.')}" if path else where
    return PolyaxonError(f"{at}: {problem}", path=path, problem=problem)


class V1Model(BaseModel):
    """camelCase or snake_case keys; unknown keys and bad values raise a one-line PolyaxonError."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel,
                              arbitrary_types_allowed=True, validate_assignment=True)
    _where: ClassVar[str] = "polyaxonfile"

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise convert_error(e, type(self), type(self)._where) from None

    @classmethod
    def read(cls, data: Any, where: str) -> Any:
        """Validate ``data`` (a dict from YAML, or an instance) as this model; errors start with ``where``."""
        if isinstance(data, cls):
            return data
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise convert_error(e, cls, where) from None

    def to_dict(self) -> dict[str, Any]:
        """Polyaxon's camelCase form, unset fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class V1Entity(V1Model):
    """What components and operations both carry: a version, a name, a description and Polyaxon's scheduling
    fields (kept and shown; hpo schedules by its own config)."""

    version: float | str | None = None
    name: str | None = None
    description: str | None = None
    tags: list[str] | None = None
    presets: list[str] | None = None
    queue: str | None = None
    namespace: str | None = None
    cache: dict[str, Any] | None = None
