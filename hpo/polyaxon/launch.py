"""The trial side of a Polyaxon run (stdlib only): render the container's command and args, then exec it.

The engine runs ``python3 -m hpo.polyaxon.launch``; ``HPO_POLYAXON_RUN`` (JSON, from the experiment's
``trial_env``) holds the container, the inputs' declarations and the constant params; the trial's own
parameters (the matrix's) override those.  Globals point at the trial's folders.
"""
from __future__ import annotations

import datetime
import json
import os
import sys
from pathlib import Path
from typing import Any

from hpo.polyaxon.context import render

__all__ = ["command_line", "trial_globals", "main"]


def trial_globals(spec: dict[str, Any]) -> dict[str, Any]:
    """``globals.*`` for this trial: its id, sequence number and folders (``outputs/`` is created)."""
    trial_dir = Path(os.environ.get("HPO_TRIAL_DIR") or os.getcwd())
    outputs = trial_dir / "outputs"
    outputs.mkdir(parents=True, exist_ok=True)
    uuid = os.environ.get("HPO_TRIAL_ID", "local")
    project = spec.get("project") or "default"
    return {**spec.get("globals", {}), "uuid": uuid, "iteration": int(os.environ.get("HPO_SEQUENCE_ID", "0")),
            "project_name": project, "project_unique_name": project, "owner_name": os.environ.get("USER", ""),
            "run_info": f"{project}.runs.{uuid}", "context_path": os.getcwd(),
            "artifacts_path": str(trial_dir.parent.parent), "store_path": str(trial_dir.parent.parent),
            "run_artifacts_path": str(trial_dir), "run_outputs_path": str(outputs),
            "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(), "is_independent": True}


def command_line(spec: dict[str, Any], params: dict[str, Any], globals_: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """The argv to exec (args rendered to nothing are left out) and the environment it adds."""
    ios = spec.get("inputs", {})
    argv = [render(str(a), params, globals_, ios=ios) for a in spec.get("command") or []]
    argv += [r for a in spec.get("args") or [] if (r := render(str(a), params, globals_, ios=ios, where="args"))]
    env = {k: render(str(v), params, globals_, ios=ios, where=f"env {k}") for k, v in spec.get("env", {}).items()}
    for name, var in spec.get("to_env", {}).items():
        if params.get(name) is not None:
            env[var] = params[name] if isinstance(params[name], str) else json.dumps(params[name])
    return argv, env


def main() -> int:
    spec = json.loads(os.environ["HPO_POLYAXON_RUN"])
    from hpo.trial import get_next_parameter
    params = {**spec.get("params", {}), **(get_next_parameter() or {})}
    globals_ = trial_globals(spec)
    try:
        argv, env = command_line(spec, params, globals_)
    except KeyError as e:
        print(f"hpo: error: {e.args[0]}", file=sys.stderr)
        return 2
    if not argv:
        print("hpo: error: run.container.command and args render to nothing; expected a command", file=sys.stderr)
        return 2
    if spec.get("working_dir"):
        os.chdir(render(spec["working_dir"], params, globals_, where="workingDir"))
    os.environ.update(env)
    try:
        os.execvp(argv[0], argv)
    except OSError as e:
        print(f"hpo: error: cannot run {argv[0]!r}: {e.strerror}", file=sys.stderr)
        return 127
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
