"""No-op NNI trial used by benchmarks/nni_side.py.

It does no work: it asks NNI for its parameters, computes the deterministic
objective ``x * 1000 + y`` and reports it as the final result. The driver
recomputes the same objective from ``experiment.export_data()`` to check that
NNI paired every result with the parameters that produced it.

If the environment variable ``HPO_BENCH_TRIAL_LOG`` names a file, one JSON line
(trial job id, parameter id, parameters received, value reported) is appended
to it, so the driver can tell apart "the trial got other parameters than NNI
recorded" from "NNI stored the result against the wrong parameters".
"""

import json
import os

import nni


def objective(params):
    return float(params["x"]) * 1000.0 + float(params["y"])


def main():
    params = nni.get_next_parameter()
    value = objective(params)
    log_path = os.environ.get("HPO_BENCH_TRIAL_LOG")
    if log_path:
        record = {
            "trial_job_id": nni.get_trial_id(),
            "sequence_id": nni.get_sequence_id(),
            "parameters": params,
            "value": value,
        }
        # O_APPEND writes of a single short line are atomic enough here.
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    nni.report_final_result(value)


if __name__ == "__main__":
    main()
