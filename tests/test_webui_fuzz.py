"""Fuzz the dashboard's API from its own OpenAPI document (schemathesis): valid and invalid requests
to every operation of a live experiment (and of a stored one read through the registry) must never
give a 500, and answers must match the document (status codes, content types, response schemas)."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from browser_support import CONTROLLED_SPACE, CONTROLLED_TRIAL
from conftest import wait_until

schemathesis = pytest.importorskip("schemathesis", reason="pip install schemathesis")
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import (content_type_conformance, not_a_server_error,  # noqa: E402
                                 response_schema_conformance, status_code_conformance)

from webui.openapi import openapi_document  # noqa: E402

EXAMPLES = int(os.environ.get("HPO_FUZZ_EXAMPLES", "15"))  # per operation and mode
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def _tame(case):
    """Keep fuzzed config changes from starting hundreds of processes on the test machine."""
    if case.method.upper() == "PATCH" and isinstance(case.body, dict):
        if isinstance(case.body.get("trial_concurrency"), int) and case.body["trial_concurrency"] > 3:
            case.body["trial_concurrency"] = 3
        space = case.body.get("search_space")
        if isinstance(space, dict) and any(isinstance(v, dict) and v.get("_type") for v in space.values()):
            del case.body["search_space"]  # a valid new space could ask for thousands of trials
    return case


def test_api_fuzz_no_server_errors(make_experiment) -> None:
    stored = make_experiment("import hpo\nhpo.report_final_result(hpo.get_next_parameter()['x'])\n",
                             max_trial_number=3, trial_concurrency=3)
    stored.run(port=0)
    exp = make_experiment(CONTROLLED_TRIAL, search_space=CONTROLLED_SPACE, trial_concurrency=2, max_trial_number=40)
    exp.start(port=0)
    wait_until(lambda: exp.list_trial_jobs(status="RUNNING"), 10, what="a running trial")
    base = f"http://127.0.0.1:{exp.port}"
    headers = {"Authorization": f"Bearer {(Path(exp.directory) / '.token').read_text().strip()}"}
    schema = schemathesis.openapi.from_dict(openapi_document(include_streams=False))
    operations = [r.ok() for r in schema.get_all_operations()]
    # the stop action last, so the other actions meet a running engine
    operations.sort(key=lambda op: op.path.endswith("/experiment/stop"))
    trial_ids = [t["id"] for t in exp.list_trial_jobs()] + [t["id"] for t in stored.list_trial_jobs()]
    counts: dict[str, int] = {}
    import requests
    session = requests.Session()
    started = time.monotonic()
    try:
        for op in operations:
            path_params = {}
            if "{experiment_id}" in op.path:
                path_params["experiment_id"] = stored.id
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                strategy = op.as_strategy(generation_mode=mode).map(_tame)
                if "{trial_id}" in op.path and mode is GenerationMode.POSITIVE:  # half the cases hit real trials
                    from hypothesis import strategies as st
                    strategy = st.one_of(strategy, op.as_strategy(generation_mode=mode, path_parameters={
                        **path_params, "trial_id": trial_ids[0]}).map(_tame))
                elif path_params and mode is GenerationMode.POSITIVE:
                    strategy = op.as_strategy(generation_mode=mode, path_parameters=path_params).map(_tame)

                @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                          suppress_health_check=list(HealthCheck))
                @given(case=strategy)
                def run(case) -> None:
                    response = case.call(base_url=base, session=session, headers=headers, timeout=30)
                    counts[f"{op.method.upper()} {op.path}"] = counts.get(f"{op.method.upper()} {op.path}", 0) + 1
                    if mode is GenerationMode.NEGATIVE:
                        case.validate_response(response, checks=[not_a_server_error])
                    else:
                        case.validate_response(response, checks=CHECKS)

                try:
                    run()
                except Unsatisfiable:
                    if mode is GenerationMode.POSITIVE:
                        raise  # an operation without inputs has no invalid request to make
    finally:
        (Path(exp.config.trial_code_directory) / "release").write_text("")
    assert len(counts) == len(operations)
    print(f"fuzzed {sum(counts.values())} requests over {len(counts)} operations in {time.monotonic() - started:.1f} s")
