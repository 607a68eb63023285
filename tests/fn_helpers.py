"""Module-level trial functions for tests/test_engine.py (pickled by reference, imported in the trial)."""
import os


def objective(params):
    return {"default": params["x"] * 2, "pid": os.getpid()}
