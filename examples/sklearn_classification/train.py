"""A real (cheap) trial: an SVM on scikit-learn's bundled digits data set.

Runs standalone too (`python train.py`): it then uses default parameters.
"""
import pickle
import time

from sklearn.datasets import load_digits
from sklearn.model_selection import cross_val_score
from sklearn.svm import SVC

import hpo

DEFAULTS = {"C": 1.0, "gamma": 0.001, "kernel": "rbf"}


def main() -> None:
    params = {**DEFAULTS, **(hpo.get_next_parameter() or {})}
    X, y = load_digits(return_X_y=True)
    model = SVC(C=params["C"], gamma=params["gamma"], kernel=params["kernel"])
    started = time.time()
    scores = []
    for fold, score in enumerate(cross_val_score(model, X, y, cv=3)):
        scores.append(score)
        hpo.report_intermediate_result(sum(scores) / len(scores))  # running mean after each fold
    accuracy = sum(scores) / len(scores)
    print(f"params={params} accuracy={accuracy:.4f} seconds={time.time() - started:.2f}")
    model.fit(X, y)  # the model itself, trained on all the data, saved as the trial's checkpoint
    try:
        with hpo.checkpoint_path({"steps_completed": len(scores), "accuracy": accuracy}) as path:
            (path / "model.pkl").write_bytes(pickle.dumps(model))
    except RuntimeError as exc:  # a training service that does not collect checkpoints (yet)
        print(f"no checkpoint saved: {exc}")
    hpo.report_final_result({"default": accuracy, "worst_fold": min(scores)})


if __name__ == "__main__":
    main()
