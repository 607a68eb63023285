"""Tune an SVM on the digits data set: `python examples/sklearn_classification/launch.py [PORT]`."""
import sys
from pathlib import Path

from hpo import Experiment
from tuners import TpeTuner

search_space = {
    "C": {"_type": "loguniform", "_value": [0.01, 100]},
    "gamma": {"_type": "loguniform", "_value": [1e-5, 1e-1]},
    "kernel": {"_type": "choice", "_value": ["rbf", "poly", "sigmoid"]},
}

experiment = Experiment(TpeTuner(optimize_mode="maximize", seed=0), "local")
experiment.config.experiment_name = "digits-svm"
experiment.config.trial_concurrency = 2
experiment.config.max_trial_number = 30
experiment.config.search_space = search_space
experiment.config.trial_command = f"{sys.executable} train.py"
experiment.config.trial_code_directory = Path(__file__).parent

if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
    ok = experiment.run(port)
    best = experiment.best_trial()
    if best is not None:
        print(f"best accuracy {best['final_value']:.4f} with {best['parameters']} (trial {best['id']})")
        from hpo import client  # the best model, from its checkpoint into the model registry
        checkpoint = client.get_experiment(experiment.id).top_checkpoint()
        try:
            model = client.create_model("digits-svm", description="SVM on scikit-learn's digits")
        except client.ModelExists:
            model = client.get_model("digits-svm")
        version = model.register_version(checkpoint.uuid)
        print(f"registered as model digits-svm version {version.model_version}: {checkpoint.location}/model.pkl "
              f"(hpo model show digits-svm)")
    print(f"inspect it later with: hpo view {experiment.id}   or   hpo trials {experiment.id}")
    sys.exit(0 if ok else 1)
