"""Runs a ``trial_function`` in a child process: ``python -m hpo.function_trial FILE``.

FILE holds the function pickled with cloudpickle.  The function receives the parameters dict;
its return value (if not None, and unless it already called ``report_final_result``) is the
final result.
"""
from __future__ import annotations

import sys

import hpo
from hpo import trial


def main(path: str) -> None:
    import cloudpickle

    with open(path, "rb") as fh:
        fn = cloudpickle.load(fh)
    result = fn(hpo.get_next_parameter())
    if result is not None and not trial._final_reported:
        hpo.report_final_result(result)


if __name__ == "__main__":
    main(sys.argv[1])
