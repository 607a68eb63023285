"""Trial functions for benchmarks/warm_start.py (pickled by value; the modules they use are imported by the trial).

``zero`` does no work (``warm_sklearn_trial.with_sklearn``: nor does it, but its module imports scikit-learn);
``one_second`` works (sleeps) one second and reports when it started and ended, for the utilisation figure.
"""
import time


def zero(params):
    return float(params["x"]) * 1000.0 + float(params["y"])


def one_second(params):
    start = time.time()
    time.sleep(1.0)
    return {"default": float(params["x"]), "start": start, "end": time.time()}
