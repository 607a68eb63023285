"""Runs a ``trial_function`` in a child process: ``python -m hpo.function_trial FILE``.

FILE holds the function pickled with cloudpickle.  The function receives the parameters dict;
its return value (if not None, and unless it already called ``report_final_result``) is the
final result.  The local service's warm-start zygote loads the function once (:func:`load`) and has each forked
trial :func:`call` it.
"""
from __future__ import annotations

import sys
from typing import Any, Callable

import hpo
from hpo import trial


def load(path: str) -> Callable[[Any], Any]:
    """The trial function pickled in ``path`` (importing its module, where it has one)."""
    import cloudpickle

    with open(path, "rb") as fh:
        return cloudpickle.load(fh)


def call(fn: Callable[[Any], Any]) -> None:
    """Run ``fn`` as this process's trial: its return value is the final result, unless it reported one."""
    result = fn(hpo.get_next_parameter())
    if result is not None and not trial._final_reported:
        hpo.report_final_result(result)


if __name__ == "__main__":
    call(load(sys.argv[1]))
