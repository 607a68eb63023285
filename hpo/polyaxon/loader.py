"""Polyaxon files and Python modules read into one ``V1Operation``: the first source is a component or an
operation; each later ``-f`` file is patched onto it in order, with its own ``patchStrategy``."""
from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any, Sequence

from hpo.polyaxon.base import V1Model, _snake
from hpo.polyaxon.component import V1Component
from hpo.polyaxon.errors import PolyaxonError
from hpo.polyaxon.operation import V1Operation
from hpo.polyaxon.patch import patch

__all__ = ["load_operation", "read_python_module", "operation_dict", "apply_command_line"]

_BESIDE = ("component.yml", "component.yaml", "polyaxonfile.yml", "polyaxonfile.yaml")


def _read(path: Path) -> dict[str, Any]:
    from hpo.config import ConfigError, _read_yaml

    if path.suffix.lower() not in (".yml", ".yaml", ".json"):
        raise PolyaxonError(f"{path}: unsupported file type {path.suffix!r}; expected .yml, .yaml or .json")
    try:
        data = _read_yaml(path)
    except ConfigError as e:
        raise PolyaxonError(str(e)) from None
    if not isinstance(data, dict):
        raise PolyaxonError(f"{path}: top level is {'empty' if data is None else type(data).__name__}; expected a "
                            "mapping (kind: component or kind: operation)")
    return data


def _snake_top(data: dict[str, Any], where: str) -> dict[str, Any]:
    """Top-level (and matrix) keys as snake_case, so camelCase and snake_case files patch each other."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = _snake(key) if isinstance(key, str) else key
        if name in out:
            raise PolyaxonError(f"{where}: both {name!r} and {key!r} are given; expected one")
        out[name] = _snake_top(value, where) if name == "matrix" and isinstance(value, dict) else value
    return out


def operation_dict(source: Any, where: str, base: Path | None = None) -> dict[str, Any]:
    """A component or operation (a dict, or a model) as an operation dict whose component is inline."""
    if isinstance(source, V1Model):
        source = source.to_dict()
    kind = source.get("kind")
    if kind == "component":
        V1Component.read(source, where)  # its own errors name the component file
        return {"kind": "operation", "component": source}
    if kind not in (None, "operation"):
        raise PolyaxonError(f"{where}: kind: got {kind!r}, expected 'component' or 'operation'")
    op = _snake_top(source, where)
    for ref in ("hub_ref", "url_ref", "dag_ref"):
        if op.get(ref):
            raise PolyaxonError(f"{where}: {ref}: not supported here; use component or pathRef")
    if op.get("component") is None and base is not None:
        ref = op.pop("path_ref", None)
        path = (base / ref) if ref else next((base / n for n in _BESIDE if (base / n).is_file()), None)
        if path is None:
            raise PolyaxonError(f"{where}: the operation has no component; expected component, pathRef, or a "
                                f"component.yml beside it")
        if not path.is_file():
            raise PolyaxonError(f"{where}: pathRef: {str(path)!r} does not exist")
        component = _read(path)
        if component.get("kind") != "component":
            raise PolyaxonError(f"{path}: kind: got {component.get('kind')!r}, expected 'component'")
        V1Component.read(component, str(path))
        op["component"] = component
    return op


def read_python_module(spec: str) -> tuple[Any, Path]:
    """``path.py[:var]`` (default var ``main``): the V1Component or V1Operation it defines, and its folder."""
    path_text, _, var = spec.partition(":") if not spec.endswith(".py") else (spec, "", "")
    path = Path(path_text)
    var = var or "main"
    if not path.is_file():
        raise PolyaxonError(f"-pm {spec}: {str(path)!r} is not a file; expected path/to/module.py[:variable]")
    try:
        namespace = runpy.run_path(str(path))
    except Exception as e:  # the user's module failed to run: one line with its own error
        raise PolyaxonError(f"-pm {spec}: running {path} failed: {type(e).__name__}: {e}") from None
    if var not in namespace:
        found = [k for k, v in namespace.items() if isinstance(v, (V1Component, V1Operation))]
        raise PolyaxonError(f"-pm {spec}: {path} has no variable {var!r}; expected a V1Component or V1Operation"
                            + (f" (found: {', '.join(found)})" if found else ""))
    value = namespace[var]
    if not isinstance(value, (V1Component, V1Operation)):
        raise PolyaxonError(f"-pm {spec}: {var!r} is a {type(value).__name__}; expected a V1Component or V1Operation")
    return value, path.resolve().parent


def apply_command_line(op: dict[str, Any], cli: dict[str, Any]) -> dict[str, Any]:
    """``op`` with what ``hpo run``'s options set: ``matrix`` (``kind``, ``params`` from -HP, each replacing the
    file's param of that name, ``concurrency``, ``num_runs``) and operation fields (name, description, tags, queue,
    namespace, presets, cache, is_approved)."""
    op = dict(op)
    matrix = dict(cli.get("matrix") or {})
    if matrix:
        current = dict(op.get("matrix") or {})
        if not current:
            if not matrix.get("params"):
                given = ", ".join(f"--matrix-{k.replace('_', '-')}" for k in matrix)
                raise PolyaxonError(f"{given}: the operation has no matrix; give its params with -HP NAME=KIND:VALUE")
            current = {"kind": "grid"}  # Polyaxon's default matrix kind for -HP
        params = dict(current.get("params") or {})
        params.update(matrix.pop("params", None) or {})
        current.update(matrix)
        if params:
            current["params"] = params
        op["matrix"] = current
    for key, value in (cli.get("fields") or {}).items():
        if value is not None:
            op[key] = value
    return op


def load_operation(files: Sequence[str | Path] = (), python_module: str | None = None,
                   cli: dict[str, Any] | None = None) -> tuple[V1Operation, Path, str]:
    """The operation from ``python_module`` or the first file, patched with the other files in order (and with
    ``cli``, what the command line's options set: see :func:`apply_command_line`); also the folder the run's code
    is in and a name for error messages."""
    files = [Path(f) for f in files]
    if python_module is None and not files:
        raise PolyaxonError("hpo run: give a polyaxonfile with -f FILE or a Python component with -pm FILE.py[:var]")
    if python_module is not None:
        source, base = read_python_module(python_module)
        where, overrides = f"-pm {python_module}", files
    else:
        first = files[0]
        source, base, where, overrides = _read(first), first.resolve().parent, str(first), files[1:]
    op = operation_dict(source, where, base)
    for path in overrides:
        data = _read(path)
        if data.get("kind") == "component":
            raise PolyaxonError(f"{path}: an override file cannot be a component; expected operation keys "
                                "(params, matrix, runPatch, ...)")
        over = _snake_top(data, str(path))
        strategy = over.pop("patch_strategy", None)
        over.pop("kind", None)
        over.pop("version", None)
        op = patch(op, over, strategy)
    names = " + ".join([where, *map(str, overrides)])
    if cli and (cli.get("matrix") or any(v is not None for v in (cli.get("fields") or {}).values())):
        op = apply_command_line(op, cli)
        names += " + command line"
    return V1Operation.read(op, names), base, names
