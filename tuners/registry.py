"""Tuners found by name: built-ins, a user's own class, or installed plugins.

Names are matched case-insensitively and ignoring ``-``/``_`` (``'TPE'``, ``'GridSearch'`` and
``'grid_search'`` all work).  Installed packages add tuners through the ``hpo.tuners``
entry-point group.
"""
from __future__ import annotations

import difflib
import importlib
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

from tuners.base import Tuner
from tuners.nni_tuner import NniTuner, is_nni_class

__all__ = ["register_tuner", "tuner_class", "create_tuner", "load_class", "known_tuner_names", "TunerNotFound", "tuner_label"]

T = TypeVar("T")
_REGISTRY: dict[str, str | type] = {}
_CANONICAL: list[str] = []

# Built-ins are imported lazily: naming 'random' must not import every tuner's dependencies.
_BUILTIN_MODULES = {
    "random": ("tuners.random_tuner", ("random", "randomsearch", "rand")),
    "grid": ("tuners.grid", ("grid", "gridsearch", "gridtuner")),
    "logspace": ("tuners.logspace", ("logspace", "logspacetuner")),
    "hyperopt": ("tuners.hyperopt_tuner", ("hyperopt", "hyperopttuner")),
    "anneal": ("tuners.hyperopt_tuner", ("anneal", "annealtuner")),
    "optuna": ("tuners.optuna_tuner", ("optuna", "optunatuner")),
    "tpe": ("tuners.tpe", ("tpe", "tpetuner", "treeparzen")),
    "hyperband": ("tuners.hyperband", ("hyperband", "hyperbandtuner", "hb")),
    "bohb": ("tuners.bohb", ("bohb", "bohbtuner")),
    "mapping": ("tuners.mapping", ("mapping", "mappingtuner")),
    "gp": ("tuners.gp", ("gp", "gptuner", "gaussianprocess")),
}


_LABELS = {"tpe": "TPE", "random": "Random", "grid": "Grid", "logspace": "Logspace", "hyperopt": "Hyperopt",
           "anneal": "Anneal", "optuna": "Optuna", "hyperband": "Hyperband", "bohb": "BOHB", "mapping": "Mapping",
           "gp": "GP"}


def tuner_label(name: str | None = None, class_name: str | None = None) -> str | None:
    """One short display name per built-in tuner however a config names it ('tpe', 'TPE', 'tree_parzen' and
    the class 'tuners.tpe.TpeTuner' are all 'TPE'); another tuner keeps its name, or its class's own name.
    Imports nothing."""
    module, _, cls = (class_name or "").rpartition(".")
    for key, (builtin_module, aliases) in _BUILTIN_MODULES.items():
        names = (key, f"{key}tuner", *aliases)
        if (name and _norm(name) in names) or (class_name and module == builtin_module and _norm(cls) in names):
            return _LABELS.get(key, key)
    return name or cls or None


class TunerNotFound(ValueError):
    """No tuner has the given name."""


def _norm(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def register_tuner(name: str, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
    """Class decorator: make a Tuner subclass available by ``name`` and ``aliases``."""

    def deco(cls: T) -> T:
        for n in (name, *aliases):
            _REGISTRY[_norm(n)] = cls  # type: ignore[assignment]
        if name not in _CANONICAL:
            _CANONICAL.append(name)
        return cls

    return deco


def known_tuner_names() -> list[str]:
    names = list(dict.fromkeys([*_BUILTIN_MODULES, *_CANONICAL]))
    try:
        from importlib.metadata import entry_points
        names += [ep.name for ep in entry_points(group="hpo.tuners")]
    except Exception:  # pragma: no cover - broken metadata must not break lookup of built-ins
        pass
    return names


def tuner_class(name: str) -> type:
    """The Tuner class registered as ``name``; raises TunerNotFound naming the closest match."""
    key = _norm(name)
    if key not in _REGISTRY:
        for module, aliases in _BUILTIN_MODULES.values():
            if key in aliases:
                importlib.import_module(module)
    if key not in _REGISTRY:
        from importlib.metadata import entry_points
        for ep in entry_points(group="hpo.tuners"):
            if _norm(ep.name) == key:
                _REGISTRY[key] = ep.load()
    if key not in _REGISTRY:
        names = known_tuner_names()
        close = difflib.get_close_matches(name.lower(), [n.lower() for n in names], n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise TunerNotFound(f"unknown tuner {name!r}{hint} (known: {', '.join(names)})")
    return _REGISTRY[key]  # type: ignore[return-value]


def load_class(class_name: str, code_directory: str | Path | None = None) -> type:
    """Import ``module.Class`` (optionally from ``code_directory``) for a user's own tuner."""
    module_name, _, attr = class_name.rpartition(".")
    if not module_name:
        raise ValueError(f"class_name {class_name!r}: expected 'module.ClassName'")
    if code_directory is not None:
        path = str(Path(code_directory).resolve())
        if path not in sys.path:
            sys.path.insert(0, path)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"class_name {class_name!r}: cannot import module {module_name!r} ({exc})") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"class_name {class_name!r}: module {module_name!r} has no attribute {attr!r}") from None


def create_tuner(name: str | None = None, class_args: dict[str, Any] | None = None, *,
                 class_name: str | None = None, code_directory: str | Path | None = None) -> Any:
    """Instantiate a tuner by registered ``name`` or by ``class_name`` (+ ``code_directory``)."""
    cls = load_class(class_name, code_directory) if class_name else tuner_class(name or "")
    try:
        tuner = cls(**(class_args or {}))
    except TypeError as exc:
        raise ValueError(f"tuner {name or class_name!r}: bad class_args {class_args!r} ({exc})") from None
    if not isinstance(tuner, Tuner) and is_nni_class(cls):  # written for NNI: NNI's calls, NNI's types
        return NniTuner(tuner, class_args or {})
    return tuner
