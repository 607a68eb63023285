"""The OpenAPI 3.0 document of the dashboard's JSON API (served at ``/api/v1/openapi.json``)."""
from __future__ import annotations

import copy
from typing import Any

from hpo.storage import CHECKPOINT_STATES, TRIAL_STATES

__all__ = ["openapi_document"]

_TEXT_ERROR = {"content": {"text/plain": {"schema": {"type": "string"}}}}


def _err(text: str) -> dict[str, Any]:
    return {"description": text, **_TEXT_ERROR}


def _json(schema: dict[str, Any], text: str = "OK") -> dict[str, Any]:
    return {"description": text, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_ANY: dict[str, Any] = {}
_NUM_OR_NULL = {"type": "number", "nullable": True}
_TS = {"type": "number", "nullable": True, "description": "Unix time, seconds"}
_TUNER_LABEL = {"type": "string", "nullable": True,
                "description": "one short name per tuner, however the config spells it (tpe, TPE, tuners.tpe.TpeTuner: TPE)"}

_SCHEMAS: dict[str, Any] = {
    "Trial": {
        "type": "object",
        "required": ["id", "sequence_id", "parameters", "status", "created_at"],
        "properties": {
            "id": {"type": "string"},
            "sequence_id": {"type": "integer", "description": "the tuner's parameter_id"},
            "parameters": {"type": "object", "additionalProperties": True,
                           "description": "exactly the parameters the trial process received"},
            "status": {"type": "string", "enum": list(TRIAL_STATES)},
            "created_at": {"type": "number"}, "started_at": _TS, "ended_at": _TS,
            "duration": {**_NUM_OR_NULL, "description": "seconds (to now while running)"},
            "exit_code": {"type": "integer", "nullable": True},
            "message": {"type": "string", "nullable": True},
            "final": {"nullable": True, "description": "the final result as reported (number or object)"},
            "value": {**_NUM_OR_NULL, "description": "the final result's number (the 'default' key of a dict)"},
            "gpus": {"type": "array", "items": {"type": "integer"}, "nullable": True},
            "rerun_of": {"type": "integer", "nullable": True, "description": "sequence id of the trial this re-runs"},
            "steps": {"type": "integer", "description": "number of intermediate results (list only)"},
            "latest": {**_NUM_OR_NULL, "description": "latest intermediate result (list only)"},
        },
    },
    "Metric": {
        "type": "object",
        "properties": {"kind": {"type": "string", "enum": ["intermediate", "final"]}, "step": {"type": "integer"},
                       "value": _NUM_OR_NULL, "data": {"nullable": True}, "ts": {"type": "number"}},
    },
    "TrialDetail": {
        "allOf": [{"$ref": "#/components/schemas/Trial"}, {
            "type": "object",
            "properties": {
                "intermediate": {"type": "array", "items": _NUM_OR_NULL},
                "metrics": {"type": "array", "items": {"$ref": "#/components/schemas/Metric"}},
                "continues": {"type": "integer", "nullable": True, "description": "sequence id of the trial this "
                              "continues from its checkpoint (a configuration Hyperband or BOHB promoted)"},
                "rerun_of_id": {"type": "string", "nullable": True, "description": "id of the trial this re-runs"},
                "continues_id": {"type": "string", "nullable": True, "description": "id of the trial this continues"},
                "log_sizes": {"type": "object", "properties": {"stdout": {"type": "integer", "nullable": True},
                                                               "stderr": {"type": "integer", "nullable": True}}},
                "processes": {"type": "array", "description": "a distributed trial's processes, chief first (its logs: "
                              "?process=<name> on the logs routes)", "items": {
                                  "type": "object", "properties": {
                                      "name": {"type": "string", "description": "<role>-<index>"},
                                      "host": {"type": "string"}, "port": {"type": "integer"},
                                      "machine": {"type": "string", "description": "the SSH machine (remote)"},
                                      "pid": {"type": "integer", "nullable": True},
                                      "gpus": {"type": "array", "items": {"type": "integer"}}}}},
                "process_metrics": {"type": "array", "description": "results the other processes reported (not tuned "
                                    "on)", "items": {"allOf": [{"$ref": "#/components/schemas/Metric"}, {
                                        "type": "object", "properties": {"process": {"type": "string"}}}]}},
            },
        }],
    },
    "Experiment": {
        "type": "object",
        "required": ["id", "status", "config", "trial_counts", "read_only", "progress"],
        "properties": {
            "id": {"type": "string"}, "name": {"type": "string", "nullable": True},
            "status": {"type": "string", "description": "INITIALIZED, RUNNING, NO_MORE_TRIAL, STOPPING, DONE, "
                                                         "STOPPED, ERROR, or CRASHED (engine gone)"},
            "message": {"type": "string", "nullable": True},
            "config": {"type": "object", "additionalProperties": True},
            "created_at": {"type": "number"}, "started_at": _TS, "ended_at": _TS,
            "elapsed_seconds": {"type": "number"}, "remaining_seconds": _NUM_OR_NULL,
            "trial_counts": {"type": "object", "additionalProperties": {"type": "integer"}},
            "best_trial": {"allOf": [{"$ref": "#/components/schemas/Trial"}], "nullable": True},
            "best_checkpoint": {"allOf": [{"$ref": "#/components/schemas/Checkpoint"}], "nullable": True,
                                "description": "the best COMPLETED checkpoint by value (the experiment's mode)"},
            "read_only": {"type": "boolean"},
            "paused": {"type": "boolean", "description": "paused: no new trials are launched (the status stays RUNNING)"},
            "live": {"type": "boolean"}, "maximize": {"type": "boolean"},
            "tuner": {"type": "string", "nullable": True, "description": "the tuner as the config names it"},
            "tuner_label": _TUNER_LABEL, "training_service": {"type": "string", "nullable": True},
            "progress": {"type": "object", "properties": {
                "trials_done": {"type": "integer"}, "trials_counted": {"type": "integer"},
                "trials_without_result": {"type": "integer", "description": "SUCCEEDED without a usable final result"},
                "trials_waiting_with_reason": {"type": "integer",
                                               "description": "WAITING with a reason they cannot run yet"},
                "trials_total": {"type": "integer"}, "max_trial_number": {"type": "integer", "nullable": True},
                "max_experiment_duration_seconds": _NUM_OR_NULL,
                "trial_concurrency": {"type": "integer", "nullable": True}}},
            "parameter_names": {"type": "array", "items": {"type": "string"}},
            "metric_keys": {"type": "array", "items": {"type": "string"}},
        },
    },
    "Checkpoint": {
        "type": "object",
        "required": ["uuid", "trial_id", "trial_seq", "steps_completed", "state", "location", "size"],
        "properties": {
            "uuid": {"type": "string"}, "trial_id": {"type": "string"}, "trial_seq": {"type": "integer"},
            "steps_completed": {"type": "integer"},
            "value": {**_NUM_OR_NULL, "description": "the searcher metric at that step"},
            "metrics": {"nullable": True, "description": "the metrics at that step (an object)"},
            "metadata": {"type": "object", "nullable": True, "additionalProperties": True},
            "resources": {"type": "object", "nullable": True, "additionalProperties": {"type": "integer"},
                          "description": "file path -> bytes"},
            "size": {"type": "integer", "description": "bytes of every file (the sum of resources)"},
            "location": {"type": "string", "description": "a local folder or an s3:// URL, as stored"},
            "state": {"type": "string", "enum": list(CHECKPOINT_STATES)},
            "message": {"type": "string", "nullable": True, "description": "why it is ERROR or DELETED"},
            "report_time": {"type": "number"},
        },
    },
    "Model": {
        "type": "object", "required": ["name", "num_versions", "versions"],
        "properties": {
            "name": {"type": "string"}, "description": {"type": "string"},
            "labels": {"type": "array", "items": {"type": "string"}}, "archived": {"type": "boolean"},
            "creation_time": {"type": "number"}, "last_updated_time": {"type": "number"},
            "num_versions": {"type": "integer", "description": "every version of the model"},
            "versions": {"type": "array", "description": "the versions on this experiment's checkpoints, newest first",
                         "items": {"type": "object", "properties": {
                             "version": {"type": "integer"}, "name": {"type": "string", "nullable": True},
                             "comment": {"type": "string", "nullable": True}, "checkpoint_uuid": {"type": "string"},
                             "creation_time": {"type": "number"}, "trial_id": {"type": "string"},
                             "trial_seq": {"type": "integer"}, "steps_completed": {"type": "integer"},
                             "checkpoint_state": {"type": "string", "enum": list(CHECKPOINT_STATES)}}}},
        },
    },
    "RegistryEntry": {
        "type": "object", "required": ["id", "status"],
        "properties": {
            "id": {"type": "string"}, "name": {"type": "string", "nullable": True}, "status": {"type": "string"},
            "project": {"type": "string", "nullable": True, "description": "the experiment's project (config key)"},
            "message": {"type": "string", "nullable": True,
                        "description": "why it ended (for ERROR: the reason, then the first failure's stderr lines)"},
            "running": {"type": "boolean"}, "port": {"type": "integer", "nullable": True},
            "trials": {"type": "integer"}, "max_trial_number": {"type": "integer", "nullable": True},
            "best_value": _NUM_OR_NULL, "best_trial": {"type": "string", "nullable": True},
            "tuner": {"type": "string", "nullable": True}, "tuner_label": _TUNER_LABEL, "current": {"type": "boolean"},
        },
    },
    "Logs": {
        "type": "object", "required": ["trial_id", "stream", "line", "lines"],
        "properties": {"trial_id": {"type": "string"}, "stream": {"type": "string", "enum": ["stdout", "stderr"]},
                       "line": {"type": "integer"}, "lines": {"type": "array", "items": {"type": "string"}},
                       "next_line": {"type": "integer"}, "total_lines": {"type": "integer"}},
    },
    "ChartData": {
        "type": "object", "description": "trials column by column (index i is one trial): every trial up to `points` "
                                         "of them, else a sample that keeps the best, the worst, the longest, the "
                                         "running ones and each stretch's lowest and highest (`sampled`), with a "
                                         "`summary` over every trial",
        "required": ["count", "seq", "id", "status", "value", "start", "end", "params"],
        "properties": {
            "version": {"type": "integer"}, "count": {"type": "integer", "description": "trials in these columns"},
            "total": {"type": "integer", "description": "trials in the experiment"},
            "sampled": {"type": "boolean"},
            "summary": {"type": "object", "description": "when sampled: `groups` (trials per legend entry: status, "
                        "`FAILED-lane`...), `best` (`seq` and `time`: [x, best so far] where it changes), "
                        "`duration_bins` ([from, to, trials])"},
            "seq": {"type": "array", "items": {"type": "integer"}}, "id": {"type": "array", "items": {"type": "string"}},
            "status": {"type": "array", "items": {"type": "string"}}, "value": {"type": "array", "items": _NUM_OR_NULL},
            "start": {"type": "array", "items": _NUM_OR_NULL}, "end": {"type": "array", "items": _NUM_OR_NULL},
            "created": {"type": "array", "items": {"type": "number"}},
            "params": {"type": "object", "additionalProperties": {"type": "array", "items": {}}},
        },
    },
    "Curves": {
        "type": "object", "required": ["trials"],
        "properties": {
            "trials": {"type": "array", "items": {"type": "object", "properties": {
                "id": {"type": "string"}, "seq": {"type": "integer"}, "status": {"type": "string"},
                "value": _NUM_OR_NULL, "steps": {"type": "array", "items": {"type": "integer"}},
                "values": {"type": "array", "items": _NUM_OR_NULL},
                "points": {"type": "integer", "description": "a long curve's length, when `steps` is a downsample "
                           "(first, last, and each stretch's lowest and highest)"}}}},
            "bands": {"type": "object", "description": "per-step quartiles over (a sample of 500) trials (steps with "
                                                       "3+ values)",
                      "properties": {k: {"type": "array", "items": {"type": "number"}}
                                     for k in ("step", "p25", "median", "p75", "count")}},
        },
    },
    "Importance": {
        "type": "object", "required": ["n", "importances"],
        "properties": {
            "n": {"type": "integer", "description": "trials with a final result used"},
            "method": {"type": "string", "nullable": True, "description": "what the numbers are"},
            "note": {"type": "string", "nullable": True},
            "importances": {"type": "array", "items": {"type": "object", "properties": {
                "name": {"type": "string"}, "value": {"type": "number"},
                "kind": {"type": "string", "enum": ["numeric", "categorical"]}}}},
        },
    },
    "ConfigUpdate": {
        "type": "object", "minProperties": 1, "additionalProperties": False,
        "properties": {
            "trial_concurrency": {"type": "integer", "minimum": 1},
            "max_trial_number": {"type": "integer", "minimum": 1, "nullable": True},
            "max_experiment_duration": {"oneOf": [{"type": "string", "example": "2h"},
                                                  {"type": "number", "exclusiveMinimum": True, "minimum": 0}],
                                        "nullable": True, "description": "seconds, or '30s', '30m', '1.5h', '1d'"},
            "search_space": {"type": "object", "additionalProperties": True},
        },
    },
}

_P = {
    "trial_id": {"name": "trial_id", "in": "path", "required": True, "schema": {"type": "string"}},
    "experiment_id": {"name": "experiment_id", "in": "path", "required": True,
                      "schema": {"type": "string"}, "description": "another experiment in the registry (read-only)"},
    "stream": {"name": "stream", "in": "query", "schema": {"type": "string", "enum": ["stdout", "stderr"],
                                                           "default": "stdout"}},
    "process": {"name": "process", "in": "query", "schema": {"type": "string"},
                "description": "one process of a distributed trial (<role>-<index>); default: all, merged"},
}

_TRIALS_PARAMS = [
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 100}},
    {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": 1000000000,
                                                 "default": 0}},
    {"name": "sort", "in": "query", "schema": {"type": "string", "default": "seq"},
     "description": "seq, id, status, value, duration, created_at, started_at, ended_at, exit_code, message, "
                    "param.NAME or metric.KEY (NULLs last, ties by seq)"},
    {"name": "order", "in": "query", "schema": {"type": "string", "enum": ["asc", "desc"], "default": "asc"}},
    {"name": "status", "in": "query", "schema": {"type": "string"},
     "description": f"comma-separated states: {', '.join(TRIAL_STATES)}"},
    {"name": "filter", "in": "query", "style": "form", "explode": True,
     "schema": {"type": "array", "items": {"type": "string"}, "maxItems": 20},
     "description": "FIELD OP VALUE, repeatable (AND): ops >= <= > < == != ~ (contains); fields as for sort, "
                    "e.g. value<0.5, param.lr>=1e-3, param.act==relu, message~memory"},
    {"name": "q", "in": "query", "schema": {"type": "string"}, "description": "text in the id or parameters"},
]

_READS: dict[str, Any] = {
    "/experiment": {"get": {
        "summary": "The experiment: config, status, progress against limits, elapsed/remaining time, best trial",
        "operationId": "getExperiment", "responses": {"200": _json(_ref("Experiment"))}}},
    "/trials": {"get": {
        "summary": "A page of trials, sorted and filtered; the total matching is in X-Total-Count",
        "operationId": "listTrials", "parameters": _TRIALS_PARAMS,
        "responses": {"200": {**_json({"type": "array", "items": _ref("Trial")}),
                              "headers": {"X-Total-Count": {"schema": {"type": "integer"}}}},
                      "400": _err("a bad sort, filter, status or paging argument")}}},
    "/trials/{trial_id}": {"get": {
        "summary": "One trial: parameters, intermediate and final metrics with timestamps, exit code, message",
        "operationId": "getTrial", "parameters": [_P["trial_id"]],
        "responses": {"200": _json(_ref("TrialDetail")), "404": _err("no such trial")}}},
    "/trials/{trial_id}/logs": {"get": {
        "summary": "Lines of a trial's stdout or stderr: [line, line+limit), or the last `tail` lines",
        "operationId": "getTrialLogs",
        "parameters": [_P["trial_id"], _P["stream"], _P["process"],
                       {"name": "line", "in": "query", "schema": {"type": "integer", "minimum": 0,
                                                                 "maximum": 1000000000, "default": 0}},
                       {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100000,
                                                                  "default": 1000}},
                       {"name": "tail", "in": "query", "schema": {"type": "integer", "minimum": 0,
                                                                 "maximum": 100000}}],
        "responses": {"200": _json(_ref("Logs")), "400": _err("bad arguments"), "404": _err("no such trial"),
                      "403": _err("the log is not a regular file in the trial's folder (not served)")}}},
    "/export": {"get": {
        "summary": "Trials with a final result, as NNI's export_data() (streamed, a page at a time)",
        "operationId": "exportData",
        "responses": {"200": _json({"type": "array", "items": {"type": "object"}})}}},
    "/chart-data": {"get": {
        "summary": "Trials in columns for the charts: every trial, or past `points` a sample that keeps what the "
                   "charts show, with a summary of every trial (cached until a trial changes)",
        "operationId": "getChartData",
        "parameters": [{"name": "points", "in": "query", "schema": {"type": "integer", "minimum": 100,
                                                                    "maximum": 20000, "default": 2000}}],
        "responses": {"200": _json(_ref("ChartData")), "400": _err("a bad number of points")}}},
    "/metrics": {"get": {
        "summary": "Intermediate results in bulk: given trials, or the `top` best plus the running ones; "
                   "optional per-step quartile bands over all trials",
        "operationId": "getMetrics",
        "parameters": [{"name": "trials", "in": "query", "schema": {"type": "string"},
                        "description": "comma-separated trial ids (at most 500)"},
                       {"name": "top", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": 500,
                                                                "default": 20}},
                       {"name": "bands", "in": "query", "schema": {"type": "boolean", "default": False}}],
        "responses": {"200": _json(_ref("Curves")), "400": _err("too many trials")}}},
    "/checkpoints": {"get": {
        "summary": "Checkpoints (of one trial, in some states), newest first",
        "operationId": "listCheckpoints",
        "parameters": [{"name": "trial", "in": "query", "schema": {"type": "string"}, "description": "a trial id"},
                       {"name": "state", "in": "query", "schema": {"type": "string"},
                        "description": f"comma-separated states: {', '.join(CHECKPOINT_STATES)}"}],
        "responses": {"200": _json({"type": "array", "items": _ref("Checkpoint")}),
                      "400": _err("a bad trial id or state"), "404": _err("no such trial")}}},
    "/models": {"get": {
        "summary": "Every registered model with its version count, and its versions on this experiment's checkpoints",
        "operationId": "listModels",
        "responses": {"200": _json({"type": "array", "items": _ref("Model")}),
                      "503": _err("the model registry cannot be read")}}},
    "/importance": {"get": {
        "summary": "Parameter importance for the final metric (the method is named in the answer)",
        "operationId": "getImportance", "responses": {"200": _json(_ref("Importance"))}}},
}

_ACTIONS: dict[str, Any] = {
    "/experiment": {"patch": {
        "summary": "Change concurrency, max trials, max duration or the search space of the running experiment",
        "operationId": "updateExperiment",
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("ConfigUpdate")}}},
        "responses": {"200": _json({"type": "object", "properties": {"updated": {"type": "array",
                                                                                 "items": {"type": "string"}}}}),
                      "400": _err("a bad value (nothing is changed)"),
                      "409": _err("read-only or ended")}}},
    "/experiment/stop": {"post": {
        "summary": "Stop the experiment (running trials are cancelled and re-run on resume)",
        "operationId": "stopExperiment",
        "responses": {"200": _json({"type": "object", "properties": {"status": {"type": "string"}}}),
                      "409": _err("read-only")}}},
    "/experiment/pause": {"post": {
        "summary": "Pause the experiment: no new trials are launched, running ones continue",
        "operationId": "pauseExperiment",
        "responses": {"200": _json({"type": "object", "properties": {"paused": {"type": "boolean"}}}),
                      "409": _err("read-only or ended")}}},
    "/experiment/activate": {"post": {
        "summary": "Activate a paused experiment: trials are launched again",
        "operationId": "activateExperiment",
        "responses": {"200": _json({"type": "object", "properties": {"paused": {"type": "boolean"}}}),
                      "409": _err("read-only or ended")}}},
    "/trials": {"post": {
        "summary": "Queue a trial with the given parameters (a point of the search space)",
        "operationId": "submitTrial",
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "required": ["parameters"], "additionalProperties": False,
            "properties": {"parameters": {"type": "object", "additionalProperties": True}}}}}},
        "responses": {"202": _json({"type": "object", "properties": {"queued": {"type": "object"}}}),
                      "400": _err("not a point of the search space"), "409": _err("read-only or ended")}}},
    "/trials/rerun": {"post": {
        "summary": "Re-run failed trials in bulk (every failed trial, or the given ones) with the same parameters",
        "operationId": "rerunTrials",
        "requestBody": {"required": False, "content": {"application/json": {"schema": {
            "type": "object", "additionalProperties": False,
            "properties": {"trial_ids": {"type": "array", "items": {"type": "string"}, "maxItems": 10000}}}}}},
        "responses": {"200": _json({"type": "object", "properties": {"queued": {"type": "array",
                                                                                "items": {"type": "string"}}}}),
                      "400": _err("bad body"), "409": _err("read-only or ended")}}},
    "/trials/{trial_id}/kill": {"post": {
        "summary": "End a running trial and its whole process tree (USER_CANCELED)", "operationId": "killTrial",
        "parameters": [_P["trial_id"]],
        "responses": {"200": _json({"type": "object", "properties": {"killed": {"type": "string"}}}),
                      "404": _err("not running"), "409": _err("read-only")}}},
    "/trials/{trial_id}/rerun": {"post": {
        "summary": "Re-run one failed or cancelled trial", "operationId": "rerunTrial",
        "parameters": [_P["trial_id"]],
        "responses": {"200": _json({"type": "object", "properties": {"queued": {"type": "array",
                                                                                "items": {"type": "string"}}}}),
                      "404": _err("no such trial"), "409": _err("cannot be re-run, read-only or ended")}}},
}

_STREAMS: dict[str, Any] = {
    "/events": {"get": {
        "summary": "Server-sent events: `hello`, then `batch` {events: [[kind, data], ...]} with kinds trial, "
                   "metric, status, config, checkpoint; `reset` when events were dropped. A read-only server sends only hello. "
                   "Streams with and without the token are capped apart; past a cap the oldest of its kind is closed.",
        "operationId": "events", "x-stream": True,
        "responses": {"200": {"description": "an event stream", "content": {"text/event-stream": {
            "schema": {"type": "string"}}}}}}},
    "/trials/{trial_id}/logs/stream": {"get": {
        "summary": "Follow a trial's log as server-sent events: `lines` {line, lines}, then `end` when it ended",
        "operationId": "streamTrialLogs", "x-stream": True,
        "parameters": [_P["trial_id"], _P["stream"], _P["process"],
                       {"name": "line", "in": "query", "schema": {"type": "integer", "minimum": 0,
                                                                 "maximum": 1000000000, "default": 0}}],
        "responses": {"200": {"description": "an event stream", "content": {"text/event-stream": {
            "schema": {"type": "string"}}}}, "404": _err("no such trial"),
            "403": _err("the log is not a regular file in the trial's folder (not served)")}}},
}


def openapi_document(include_streams: bool = True) -> dict[str, Any]:
    """The document; ``include_streams=False`` leaves out the never-ending event streams (for fuzzing)."""
    paths: dict[str, Any] = {}
    common = {"401": _err("token needed"), "403": _err("not a loopback Host on a loopback-only server")}
    body_errors = {"400": _err("not JSON, or nested too deeply"), "408": _err("the body did not arrive in time"),
                   "413": _err("the body is too large")}
    for group in (_READS, _ACTIONS, _STREAMS if include_streams else {}):
        for path, ops in group.items():
            for method, op in ops.items():
                op = copy.deepcopy(op)
                op.setdefault("tags", ["experiment"])
                op["responses"] = {**op["responses"], **common}
                if "requestBody" in op:
                    op["responses"] = {**body_errors, **op["responses"]}
                paths.setdefault(f"/api/v1{path}", {})[method] = op
    for path, ops in _READS.items():  # the same reads for any experiment in the registry
        for method, op in ops.items():
            op = copy.deepcopy(op)
            op["operationId"] = op["operationId"] + "Other"
            op["tags"] = ["registry"]
            op["parameters"] = [_P["experiment_id"]] + op.get("parameters", [])
            op["responses"] = {**op["responses"], **common, "404": _err("no such experiment or trial")}
            paths[f"/api/v1/experiments/{{experiment_id}}{path}"] = {method: op}
    paths["/api/v1/experiments"] = {"get": {
        "summary": "Every experiment in the registry, with status, trial counts and best value",
        "operationId": "listExperiments", "tags": ["registry"],
        "parameters": [{"name": "project", "in": "query", "schema": {"type": "string"},
                        "description": "only the experiments of this project"}],
        "responses": {"200": _json({"type": "array", "items": _ref("RegistryEntry")}), **common}}}
    paths["/api/v1/openapi.json"] = {"get": {"summary": "This document", "operationId": "openapi",
                                             "responses": {"200": _json({"type": "object"})}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "hpo experiment API", "version": "1",
                 "description": "The dashboard's JSON API. On loopback, reads need no token; actions need the "
                                "experiment's token (Bearer) or a same-origin browser request. On any other "
                                "address every request needs the token."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}, {"queryToken": []}, {}],
        "components": {
            "schemas": copy.deepcopy(_SCHEMAS),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                "queryToken": {"type": "apiKey", "in": "query", "name": "token"}},
        },
        "paths": paths,
    }
