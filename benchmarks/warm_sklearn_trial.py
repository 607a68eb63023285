"""A trial function whose module imports scikit-learn (benchmarks/warm_start.py): a cold trial imports it again."""
from sklearn.ensemble import RandomForestClassifier


def with_sklearn(params):
    return {"default": float(params["x"]) * 1000.0 + float(params["y"]), "model": RandomForestClassifier.__name__}
