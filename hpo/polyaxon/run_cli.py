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

__all__ = ["add_run_parser", "parse_params", "parse_hparams", "compile_args"]

MATRIX_KINDS = ("random", "grid", "hyperband", "bayes", "hyperopt", "iterative", "mapping")


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


def parse_hparams(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """``-HP NAME=KIND:VALUE`` options (e.g. ``lr=linspace:0.001:0.1:5``, ``opt='choice:[adam, sgd]'``, or
    ``NAME={kind: ..., value: ...}``) as matrix params."""
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        name, eq, spec = item.partition("=")
        shape = "expected NAME=KIND:VALUE, e.g. -HP lr=linspace:0.001:0.1:5 or -HP opt='choice:[adam, sgd]'"
        if not eq or not name or not spec.strip():
            raise PolyaxonError(f"-HP {item}: {shape}")
        if name in out:
            raise PolyaxonError(f"-HP {name}: given twice")
        text = spec.strip()
        if text.startswith("{"):
            try:
                hp = yaml.safe_load(text)
            except yaml.YAMLError:
                hp = None
            if not isinstance(hp, dict) or "kind" not in hp:
                raise PolyaxonError(f"-HP {item}: {shape}")
        else:
            kind, colon, value = text.partition(":")
            if not colon or not kind.strip() or not value.strip():
                raise PolyaxonError(f"-HP {item}: {shape}")
            raw = value.strip()
            if raw[:1] in "[{":  # a list or mapping; other values ('0.1:1:5') stay text (YAML reads 1:5 as 65)
                try:
                    raw = yaml.safe_load(raw)
                except yaml.YAMLError as e:
                    raise PolyaxonError(f"-HP {item}: the value {value.strip()!r} is not valid YAML/JSON "
                                        f"({getattr(e, 'problem', None) or e})") from None
            hp = {"kind": kind.strip(), "value": raw}
        out[name] = hp
    return out


def command_line_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """What ``hpo run``'s matrix and operation options set (see ``loader.apply_command_line``)."""
    matrix: dict[str, Any] = {}
    if getattr(args, "hparam", None):
        matrix["params"] = parse_hparams(args.hparam)
    for key in ("matrix_kind", "matrix_concurrency", "matrix_num_runs"):
        value = getattr(args, key, None)
        if value is not None:
            matrix[key[len("matrix_"):]] = value
    tags = getattr(args, "tags", None)
    presets = getattr(args, "presets", None)
    cache = getattr(args, "cache", None)
    fields = {"name": getattr(args, "name", None), "description": getattr(args, "description", None),
              "tags": [t.strip() for t in tags.split(",") if t.strip()] if tags else None,
              "queue": getattr(args, "queue", None), "namespace": getattr(args, "namespace", None),
              "presets": [p.strip() for p in presets.split(",") if p.strip()] if presets else None,
              "cache": {"disable": not cache} if cache is not None else None,
              "is_approved": True if getattr(args, "approved", False) else None}
    return {"matrix": matrix, "fields": fields}


def _hpo_config(paths: list[str] | None) -> dict[str, Any] | None:
    """``-c`` hpo config files, merged in order (snake_case keys, paths resolved against each file)."""
    if not paths:
        return None
    from hpo.config import ConfigError, ExperimentConfig, _merge, _normalise, _read_yaml
    from hpo.polyaxon.compile import CONFIG_SET_BY_RUN

    merged: dict[str, Any] = {}
    for path in map(Path, paths):
        if path.suffix.lower() not in (".yml", ".yaml", ".json"):
            raise PolyaxonError(f"-c {path}: unsupported file type {path.suffix!r}; expected .yml, .yaml or .json")
        try:
            data = _normalise(_read_yaml(path), path)
        except ConfigError as e:
            raise PolyaxonError(str(e)) from None
        for key in CONFIG_SET_BY_RUN:
            if key in data:
                raise PolyaxonError(f"{path}: {key}: set by the polyaxonfile (its matrix, run and params), not by the "
                                    "hpo config; leave it out")
        try:
            ExperimentConfig.model_validate(data)
        except ConfigError as e:
            raise PolyaxonError(f"{path}: {e}") from None
        merged = _merge(merged, data)
    return merged


def compile_args(args: argparse.Namespace) -> Compiled:
    """Compile what the options name, printing each warning as one line."""
    for option in ("url", "hub"):
        if getattr(args, option, None):
            raise PolyaxonError(f"--{option} {getattr(args, option)}: fetching polyaxonfiles is not supported here; "
                                "save the file and pass it with -f")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = compile_source(args.file or [], args.python_module, parse_params(args.param), args.project,
                                  cli=command_line_overrides(args), config=_hpo_config(getattr(args, "config", None)))
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


def _watch(experiment_id: str) -> None:
    """Print each run's status as it changes (``[#seq] ID STATUS``) until the experiment ends."""
    from hpo.cli import _engine_alive, _open

    directory, store = _open(experiment_id)
    seen: dict[str, str] = {}
    while True:
        ended = not _engine_alive(directory, store.experiment())
        for rec in store.trials():
            if seen.get(rec["id"]) != rec["status"]:
                seen[rec["id"]] = rec["status"]
                print(f"[#{rec['seq']}] {rec['id']} {rec['status']}", flush=True)
        if ended:
            return
        time.sleep(0.2)


def _write_outputs(experiment_id: str, compiled: Compiled, path: str) -> None:
    """``-o FILE``: every run's number, id, status, params and declared outputs, as JSON."""
    import json

    from hpo.cli import _open

    _, store = _open(experiment_id)
    runs = []
    for rec in store.trials():
        final = rec["final"] if isinstance(rec["final"], dict) else {}
        runs.append({"seq": rec["seq"], "id": rec["id"], "status": rec["status"], "params": rec["parameters"],
                     "outputs": {n: final[n] for n in compiled.outputs if n in final}})
    Path(path).write_text(json.dumps({"experiment": experiment_id, "runs": runs}, indent=2, default=str) + "\n")


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
    if args.output and not (args.log or args.watch or args.foreground):
        raise PolyaxonError(f"-o {args.output}: the outputs exist once the runs end; add -l, -w or --foreground")
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
            if args.output:
                _write_outputs(started[0].id, compiled, args.output)
        return code
    argv = ["run", *[a for f in args.file or [] for a in ("-f", str(Path(f).resolve()))]]
    if args.python_module:
        path, colon, var = args.python_module.partition(":") if not args.python_module.endswith(".py") \
            else (args.python_module, "", "")
        argv += ["-pm", str(Path(path).resolve()) + colon + var]
    argv += [a for p in args.param or [] for a in ("-P", p)] + (["-p", args.project] if args.project else [])
    argv += [a for p in args.hparam or [] for a in ("-HP", p)]
    argv += [a for c in args.config or [] for a in ("-c", str(Path(c).resolve()))]
    for option in ("matrix_kind", "matrix_concurrency", "matrix_num_runs", "name", "description", "tags", "queue",
                   "namespace", "presets"):
        if getattr(args, option) is not None:
            argv += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
    argv += (["--cache"] if args.cache else ["--nocache"]) if args.cache is not None else []
    argv += ["--approved"] if args.approved else []
    try:
        started = spawn("run", argv, args.port)
    except DetachedStartError as exc:
        raise CliError(str(exc)) from None
    print(f"experiment {started.experiment_id} started in the background (pid {started.pid})\n"
          f"dashboard: http://localhost:{started.port}\n"
          f"logs: hpo logs {started.experiment_id}    stop: hpo stop {started.experiment_id}", flush=True)
    if not (args.log or args.watch):
        return 0
    if args.log:
        _follow(started.experiment_id, matrix)
    else:
        _watch(started.experiment_id)
    _show_outputs(started.experiment_id, compiled)
    if args.output:
        _write_outputs(started.experiment_id, compiled, args.output)
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
    p.add_argument("-HP", "--hparam", action="append", metavar="NAME=KIND:VALUE",
                   help="a matrix param, e.g. lr=linspace:0.001:0.1:5 or opt='choice:[adam, sgd]' (repeatable; "
                        "replaces the file's param of that name)")
    p.add_argument("--matrix-kind", choices=MATRIX_KINDS,
                   help="the matrix kind (default: the file's, else grid when -HP gives params)")
    p.add_argument("--matrix-concurrency", type=int, metavar="N", help="runs at a time")
    p.add_argument("--matrix-num-runs", type=int, metavar="N", help="the matrix's numRuns")
    p.add_argument("-c", "--config", action="append", metavar="HPO_CONFIG",
                   help="an hpo config file for what the polyaxonfile does not say, e.g. training_service "
                        "(platform kubernetes: the run's image, resources, labels, nodeSelector, ... go on its pods)")
    p.add_argument("-l", "--log", action="store_true", help="follow the runs' logs until the end, then show outputs")
    p.add_argument("-w", "--watch", action="store_true",
                   help="follow the runs' statuses until the end, then show outputs")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="with -l, -w or --foreground: also write every run's params and outputs to FILE as JSON")
    p.add_argument("-p", "--project", metavar="NAME", help="the project the experiment belongs to")
    p.add_argument("--name", help="the run's name (the experiment's name)")
    p.add_argument("--description", help="the operation's description")
    p.add_argument("--tags", metavar="A,B", help="the operation's tags, comma-separated")
    p.add_argument("-ns", "--namespace", help="the Kubernetes namespace of the runs' pods (with a kubernetes -c)")
    p.add_argument("-q", "--queue", help="accepted; hpo schedules by its own config (named in a warning)")
    p.add_argument("--presets", metavar="A,B", help="accepted; presets live on a Polyaxon server (named in a "
                                                    "warning): patch override files with -f instead")
    cache = p.add_mutually_exclusive_group()
    cache.add_argument("--cache", dest="cache", action="store_true", default=None,
                       help="accepted (named in a warning): hpo does not reuse earlier runs' results")
    cache.add_argument("--nocache", dest="cache", action="store_false", help="accepted: every run runs")
    p.add_argument("--approved", action="store_true", help="accepted: hpo runs need no approval")
    p.add_argument("-u", "--upload", action="store_true",
                   help="accepted: the code folder always goes with the runs (in place here, packed for SSH and "
                        "Kubernetes)")
    p.add_argument("--local", action="store_true", help="accepted: the engine always runs on this machine")
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--hub", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help="dashboard port (default: a free one)")
    p.add_argument("--foreground", action="store_true", help="run in this process until the experiment ends")
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
