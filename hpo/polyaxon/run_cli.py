"""``hpo run``: start a Polyaxon component or operation (``-f`` files patched in order, or ``-pm``), optionally
following its logs (``-l``), then show each run's declared outputs."""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from hpo.polyaxon.client import compile_source
from hpo.polyaxon.compile import Compiled
from hpo.polyaxon.errors import PolyaxonError

__all__ = ["add_run_parser", "parse_params", "compile_args"]


def parse_params(items: list[str] | None) -> dict[str, str]:
    """``-P name=value`` options as a dict of strings (parsed later against each input's type)."""
    out: dict[str, str] = {}
    for item in items or []:
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise PolyaxonError(f"-P {item}: expected NAME=VALUE")
        if name in out:
            raise PolyaxonError(f"-P {name}: given twice")
        out[name] = value
    return out


def compile_args(args: argparse.Namespace) -> Compiled:
    """Compile what the options name, printing each warning as one line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = compile_source(args.file or [], args.python_module, parse_params(args.param), args.project)
    for line in [str(w.message) for w in caught] + compiled.warnings:
        print(f"hpo: warning: {line}", file=sys.stderr)
    return compiled


def _follow(experiment_id: str, matrix: bool) -> None:
    """Print every trial's stdout as it is written (prefixed ``[#seq]`` in a matrix) until the experiment ends."""
    from hpo.cli import _engine_alive, _open

    directory, store = _open(experiment_id)
    offsets: dict[str, int] = {}
    partial: dict[str, bytes] = {}
    while True:
        ended = not _engine_alive(directory, store.experiment())
        for rec in store.trials():
            path = directory / "trials" / rec["id"] / "stdout.log"
            if not path.exists():
                continue
            with open(path, "rb") as fh:
                fh.seek(offsets.get(rec["id"], 0))
                chunk = fh.read()
                offsets[rec["id"]] = fh.tell()
            *lines, partial[rec["id"]] = (partial.get(rec["id"], b"") + chunk).split(b"\n")
            if ended and partial[rec["id"]]:
                lines.append(partial.pop(rec["id"]))
            for line in lines:
                if line.startswith(b"HPO_"):
                    continue
                text = line.decode("utf-8", "replace").rstrip("\r")
                print(f"[#{rec['seq']}] {text}" if matrix else text)
        sys.stdout.flush()
        if ended:
            return
        time.sleep(0.2)


def _show_outputs(experiment_id: str, compiled: Compiled) -> None:
    from hpo.cli import _open, _table, _value

    directory, store = _open(experiment_id)
    info = store.experiment()
    names = compiled.outputs
    rows = []
    for rec in store.trials():
        final = rec["final"] if isinstance(rec["final"], dict) else {}
        rows.append([rec["seq"], rec["id"], rec["status"], _value(rec["parameters"]),
                     *[_value(final[n]) if n in final else None for n in names]])
    print(f"experiment {experiment_id} {info['status']}" + (f": {info['message']}" if info.get("message") else ""))
    _table(["#", "trial", "status", "params", *names], rows)


def cmd_run(args: argparse.Namespace) -> int:
    from hpo.cli import CliError, _foreground
    from hpo.detached import DetachedStartError, spawn
    from hpo.experiment import Experiment

    compiled = compile_args(args)
    matrix = compiled.config.max_trial_number != 1 or bool(compiled.config.search_space)
    if args.foreground:
        started: list[Any] = []

        def launch(wait: bool) -> Any:
            exp = Experiment(config=compiled.config)
            started.append(exp)
            exp.run(port=args.port, wait_completion=wait)
            return exp
        code = _foreground(args, launch)
        if args.ready_fd is None:
            _show_outputs(started[0].id, compiled)
        return code
    argv = ["run", *[a for f in args.file or [] for a in ("-f", str(Path(f).resolve()))]]
    if args.python_module:
        path, colon, var = args.python_module.partition(":") if not args.python_module.endswith(".py") \
            else (args.python_module, "", "")
        argv += ["-pm", str(Path(path).resolve()) + colon + var]
    argv += [a for p in args.param or [] for a in ("-P", p)] + (["-p", args.project] if args.project else [])
    try:
        started = spawn("run", argv, args.port)
    except DetachedStartError as exc:
        raise CliError(str(exc)) from None
    print(f"experiment {started.experiment_id} started in the background (pid {started.pid})\n"
          f"dashboard: http://localhost:{started.port}\n"
          f"logs: hpo logs {started.experiment_id}    stop: hpo stop {started.experiment_id}", flush=True)
    if not args.log:
        return 0
    _follow(started.experiment_id, matrix)
    _show_outputs(started.experiment_id, compiled)
    from hpo.cli import _open
    return 0 if _open(started.experiment_id)[1].experiment()["status"] == "DONE" else 1


def add_run_parser(sub: Any) -> None:
    text = "run a Polyaxon v1 component or operation (typed inputs, params, matrix) as an hpo experiment"
    p = sub.add_parser("run", help=text, description=text)
    p.set_defaults(func=cmd_run)
    p.add_argument("-pm", "--python-module", metavar="FILE.py[:VAR]",
                        help="a component or operation defined in Python (default variable: main)")
    p.add_argument("-f", "--file", action="append", metavar="FILE",
                        help="a polyaxonfile; repeat to patch override files onto it (or onto -pm's) in order")
    p.add_argument("-P", "--param", action="append", metavar="NAME=VALUE", help="an input's value (repeatable)")
    p.add_argument("-l", "--log", action="store_true", help="follow the runs' logs until the end, then show outputs")
    p.add_argument("-p", "--project", metavar="NAME", help="the project the experiment belongs to")
    p.add_argument("--port", type=int, default=0, help="dashboard port (default: a free one)")
    p.add_argument("--foreground", action="store_true", help="run in this process until the experiment ends")
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
