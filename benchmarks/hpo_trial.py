"""No-op hpo trial for benchmarks/orchestration.py: report ``x * 1000 + y`` (same as nni_trial.py)."""
import hpo

params = hpo.get_next_parameter()
hpo.report_final_result(float(params["x"]) * 1000.0 + float(params["y"]))
