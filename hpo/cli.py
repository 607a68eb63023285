"""``hpo``: the command line (nnictl-like).  ``hpo <command> --help`` describes each command.

Experiments run detached by default: ``hpo create`` validates everything (what ``hpo check`` checks),
starts a background process (its own session, output in ``$HPO_HOME/logs/``) and waits until that
process reports ``ready <id> <port>`` (once its training service has started: SSH connections are
made) or ``error <message>`` on an inherited pipe.  Reads (list, trials, logs,
export) go to the experiment's store; actions (stop, update, kill) go to the running engine's
JSON API.  Every user mistake prints one line ``hpo: error: ...`` and exits 1 (2: bad usage).
Stored text (names, messages) is printed with control characters escaped (``\x1b``), never raw.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from hpo.registry import all_experiments, lookup
from hpo.storage import ACTIVE_STATES, CREATED, EXPERIMENT_END_STATES, TRIAL_STATES, ExperimentStore, StoreError, \
    StoreLocked, engine_running, maximizes

__all__ = ["main", "build_parser"]

_STOP_TIMEOUT, _GRID_ROWS, _VIEW_PORT = 60.0, 50, 8080


class CliError(Exception):
    """A user mistake; printed as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        self.exit(2, f"hpo: error: {message} (see `{self.prog} --help`)\n")


# -- helpers ---------------------------------------------------------------------------------------
def _alive(pid: int | None) -> bool:
    """Whether process ``pid`` runs (and is not a zombie)."""
    import psutil
    try:
        return pid is not None and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _engine_alive(directory: str | Path, info: dict[str, Any]) -> bool:
    """Whether the experiment's engine runs (it holds the experiment's writer lock)."""
    return info["status"] not in EXPERIMENT_END_STATES and engine_running(directory, info.get("pid"))


def _open(experiment_id: str) -> tuple[Path, ExperimentStore]:
    directory = lookup(experiment_id)
    try:
        return directory, ExperimentStore(directory, readonly=True)
    except FileNotFoundError as exc:
        raise CliError(f"experiment {experiment_id}: {exc}") from None


def _client(experiment_id: str, action: str) -> tuple[Any, dict[str, Any]]:
    """An ApiClient on a running experiment, and its experiment row; CliError if it is not running."""
    from hpo.api_client import ApiClient
    directory, store = _open(experiment_id)
    info = store.experiment()
    if not info.get("port") or not _engine_alive(directory, info):
        state = info["status"] if info["status"] in EXPERIMENT_END_STATES else "its engine is not running"
        raise CliError(f"experiment {experiment_id} is not running ({state}); only a running experiment can "
                       f"{action} (`hpo resume {experiment_id}` continues it)")
    return ApiClient.for_experiment(directory, info), info


def _trial(store: ExperimentStore, experiment_id: str, key: str) -> dict[str, Any]:
    rec = (store.trial(int(key)) if key.isdigit() else None) or store.trial(key)  # a sequence number or an id
    if rec is None:
        raise CliError(f"experiment {experiment_id} has no trial {key!r} (see `hpo trials {experiment_id}`)")
    return rec


def _printable(text: str) -> str:
    """``text`` with each non-printable character (terminal escapes, newlines, bidi controls) as a Python escape."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [[("-" if c is None else _printable(str(c))) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    for row in [headers, *cells]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _duration(start: float | None, end: float | None) -> str:
    if not start:
        return "-"
    seconds = max(0.0, (end or time.time()) - start)
    if seconds < 10:
        return f"{seconds:.2f}s"
    s = int(seconds)
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _value(v: Any) -> str:
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(",", ":"))
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _load_config(paths: list[str]) -> Any:
    """Load, merge and validate config files with every check `create` makes before it creates anything:
    the config (its files, folders, limits), the tuner and assessor (the tuner accepts the space), the
    trial command's ``{{ name }}`` placeholders, and the training service's precheck (GPUs)."""
    from hpo.config import ConfigError, load_config_files
    from hpo.experiment import Experiment, _make_service, check_command_template
    config = load_config_files(paths).validate_for_start()
    experiment = Experiment(config=config)
    tuner = experiment._make_tuner()
    experiment._make_assessor()
    try:
        tuner.update_search_space(config.search_space)
    except ValueError as exc:
        raise ConfigError(f"config.tuner ({config.tuner.name or config.tuner.class_name}): {exc}") from None
    check_command_template(config)
    _make_service(config)
    return config


# -- detached mode ---------------------------------------------------------------------------------
def _spawn(kind: str, argv: list[str], port: int, done: str = "started") -> int:
    """Run ``hpo <argv> --foreground`` in a new session and wait for its ready/error line (``done``: what to
    say it did)."""
    from hpo.detached import DetachedStartError, spawn
    try:
        started = spawn(kind, argv, port)
    except DetachedStartError as exc:
        raise CliError(str(exc)) from None
    print(f"experiment {started.experiment_id} {done} in the background "
          f"(pid {started.pid})\ndashboard: http://localhost:{started.port}\n"
          f"logs: hpo logs {started.experiment_id}    stop: hpo stop {started.experiment_id}")
    return 0


@contextlib.contextmanager
def _reporter(fd: int | None) -> Iterator[Callable[[str], None] | None]:
    """In the detached child: a function writing the ready line; a failure is written as ``error <msg>``."""
    if fd is None:
        yield None
        return
    pipe = os.fdopen(fd, "w", buffering=1)

    def report(line: str) -> None:
        if not pipe.closed:
            pipe.write(" ".join(line.split()) + "\n")
            pipe.close()
    try:
        yield report
    except BaseException as exc:
        report(f"error {str(exc) or type(exc).__name__}")
        raise
    finally:
        report("error the background process ended before it was ready")


@contextlib.contextmanager
def _graceful_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt once (a graceful stop); later ones are ignored."""
    fired: list[int] = []

    def handler(signum: int, _frame: Any) -> None:
        if fired:
            print("hpo: already stopping, please wait", file=sys.stderr)
            return
        fired.append(signum)
        raise KeyboardInterrupt
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _foreground(args: argparse.Namespace, launch: Callable[[bool], Any]) -> int:
    """Run an experiment in this process: ``launch(wait)`` starts it (and with ``wait``, runs it to its end
    with a progress bar).  In a detached child, report readiness once it runs (or the reason it failed),
    then wait for the end or a signal."""
    with _graceful_signals():
        with _reporter(args.ready_fd) as report:
            exp = launch(report is None)  # returns once trials can run (raises if the experiment cannot start)
            if report is not None:
                report(f"ready {exp.id} {exp.port}")
        if report is not None:
            try:
                while not exp.wait(1.0):
                    pass
            except KeyboardInterrupt:
                print("hpo: stopping (signal received)...", file=sys.stderr)
            finally:
                exp.stop()
    return 0 if exp.get_status() != "ERROR" else 1


# -- commands --------------------------------------------------------------------------------------
def cmd_create(args: argparse.Namespace) -> int:
    from hpo.experiment import Experiment
    config = _load_config(args.config)
    if not args.foreground:
        files = [a for p in args.config for a in ("--config", str(Path(p).resolve()))]
        return _spawn("create", ["create", *files, *(["--debug"] * args.debug)], args.port)

    def launch(wait: bool) -> Any:
        exp = Experiment(config=config)
        exp.run(port=args.port, debug=args.debug, wait_completion=wait)
        return exp
    return _foreground(args, launch)


# the limits `hpo update` and `hpo resume` change: (option, its argparse name, the config field)
_LIMITS = (("--concurrency", "concurrency", "trial_concurrency"), ("--max-trials", "max_trials", "max_trial_number"),
           ("--duration", "duration", "max_experiment_duration"))


def _limits(args: argparse.Namespace) -> dict[str, Any]:
    """The limits given on the command line, by config field."""
    return {field: getattr(args, name) for _, name, field in _LIMITS if getattr(args, name) is not None}


def _limit_options(args: argparse.Namespace) -> list[str]:
    """The limits given on the command line, as options again (``["--max-trials", "600"]``)."""
    return [a for option, name, _ in _LIMITS if getattr(args, name) is not None
            for a in (option, str(getattr(args, name)))]


def _add_limit_options(p: argparse.ArgumentParser, new: str = "") -> None:
    p.add_argument("--concurrency", type=int, metavar="N", help=f"{new}trial concurrency")
    p.add_argument("--max-trials", type=int, metavar="N", help=f"{new}max trial number")
    p.add_argument("--duration", metavar="D", help=f"{new}max experiment duration, e.g. 90, 30m, 2h")


def cmd_resume(args: argparse.Namespace) -> int:
    from hpo.experiment import Experiment
    limits = _limits(args)
    if not args.foreground:
        directory, store = _open(args.id)
        info = store.experiment()
        if _engine_alive(directory, info):
            raise CliError(f"experiment {args.id} is still running (pid {info['pid']}); stop it first")
        from hpo.config import ExperimentConfig
        ExperimentConfig.from_dict(info["config"]).check_update(**limits)  # a bad value fails here, in one line
        return _spawn("resume", ["resume", args.id, *_limit_options(args)], args.port,
                      "started" if info["status"] == CREATED else "resumed")
    return _foreground(args, lambda wait: Experiment.resume(args.id, port=args.port, wait_completion=wait, **limits))


def cmd_view(args: argparse.Namespace) -> int:
    from hpo.experiment import Experiment, ExperimentError
    if args.port is not None:
        Experiment.view(args.id, port=args.port)
        return 0
    for port in range(_VIEW_PORT, _VIEW_PORT + 20):  # the default port may be taken: the next free one
        try:
            _bind_check(port)
        except ExperimentError:
            continue
        if port != _VIEW_PORT:
            print(f"hpo: port {_VIEW_PORT} is in use; serving on port {port}", file=sys.stderr)
        Experiment.view(args.id, port=port)
        return 0
    raise CliError(f"ports {_VIEW_PORT}-{_VIEW_PORT + 19} are all in use; choose one with --port")


def _bind_check(port: int) -> None:
    from hpo.experiment import _bind
    _bind("127.0.0.1", port).close()


def cmd_stop(args: argparse.Namespace) -> int:
    if args.id and args.all:
        raise CliError("give one experiment id or --all, not both")
    ids = [args.id] if args.id else [str(e["id"]) for e in all_experiments() if _row(e)[1]]
    if not args.id and not args.all and len(ids) > 1:
        raise CliError(f"{len(ids)} experiments are running ({', '.join(ids)}); give one id, or --all")
    if not ids:
        print("no running experiment")
    for experiment_id in ids:
        _stop_one(experiment_id)
    return 0


def _stop_one(experiment_id: str) -> None:
    from hpo.api_client import ApiError
    directory, store = _open(experiment_id)
    info = store.experiment()
    if info["status"] in EXPERIMENT_END_STATES:
        print(f"experiment {experiment_id} is already {info['status']}")
        return
    if _end_abandoned(experiment_id, directory, info):
        return
    client, info = _client(experiment_id, "be stopped")
    pid = info["pid"]
    try:
        client.post("/experiment/stop")
    except ApiError as exc:
        print(f"hpo: the API did not answer ({exc}); sending SIGTERM to pid {pid}", file=sys.stderr)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_TIMEOUT
    while (status := store.experiment()["status"]) not in EXPERIMENT_END_STATES:
        if time.monotonic() > deadline:
            raise CliError(f"experiment {experiment_id} did not stop within {_STOP_TIMEOUT:g} s (status {status})")
        time.sleep(0.1)
    deadline = time.monotonic() + 5  # a detached or CLI engine exits too (a notebook's Python does not)
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    print(f"experiment {experiment_id} {status}")


def _end_abandoned(experiment_id: str, directory: Path, info: dict[str, Any], trial_id: str | None = None) -> bool:
    """If the (not ended) experiment's engine is dead, end what it left (all, or one trial) here; False if it
    runs."""
    from hpo.abandoned import end_abandoned
    if engine_running(directory, info.get("pid")):
        return False
    try:
        status, ended = end_abandoned(directory, trial_id)
    except StoreLocked:  # an engine took it meanwhile
        return False
    if trial_id is not None:
        if not ended:
            raise CliError(f"trial {trial_id} of experiment {experiment_id} is not running")
        print(f"trial {trial_id} of experiment {experiment_id} killed (its engine had died)")
    elif info["status"] == CREATED:
        print(f"experiment {experiment_id} {status} (it had not been started)")
    else:
        print(f"experiment {experiment_id} {status} (its engine had died; "
              f"{ended} leftover trial{'s' * (ended != 1)} ended)")
    return True


def _row(entry: dict[str, Any]) -> tuple[list[Any], bool, str | None]:
    """A `list` row for a registry entry, whether its engine runs, and its project."""
    try:
        with ExperimentStore(str(entry["directory"]), readonly=True) as store:
            info, counts = store.experiment(), store.status_counts()
            best = store.best_trial(maximizes(info["config"]))
    except Exception:  # a deleted or unreadable folder
        return [entry["id"], entry["name"], None, "MISSING", None, None, _when(entry["created_at"]), None], False, None
    status, project = info["status"], info["config"].get("project")
    running = _engine_alive(str(entry["directory"]), info)
    if status not in EXPERIMENT_END_STATES and status != CREATED and not running:
        status = "CRASHED"  # `hpo resume` continues it
    done = sum(counts[s] for s in ("SUCCEEDED", "FAILED", "EARLY_STOPPED", "USER_CANCELED"))
    total = info["config"].get("max_trial_number")
    trials = f"{done}/{total}" if total and done <= total else f"{done}(max{total})" if total else done
    return [info["id"], info["name"], project, status, trials, None if best is None else _value(best["final_value"]),
            _when(info["started_at"] or info["created_at"]), info["port"] if running else None], running, project


def cmd_list(args: argparse.Namespace) -> int:
    """Running experiments and created ones not yet started (--all: every one); --project: only that project's."""
    rows = [row for row, running, project in map(_row, all_experiments())
            if (running or args.all or row[3] == CREATED) and (args.project is None or project == args.project)]
    if rows:
        _table(["ID", "NAME", "PROJECT", "STATUS", "TRIALS", "BEST", "STARTED", "PORT"], rows)
    else:
        where = f" in project {_printable(args.project)!r}" if args.project is not None else ""
        print(f"no experiment{where}" if args.all else
              f"no running experiment{where} (`hpo list --all` shows every one)")
    return 0


TRIALS_PAGE = 100  # rows `hpo trials` prints unless told otherwise


def cmd_trials(args: argparse.Namespace) -> int:
    """One page of trials (``--limit``, default 100; ``--limit 0``: all of them), from ``--offset`` or the
    ``--page``-th page, by sequence number or ``--sort value``; a line on stderr says which and how to go on."""
    if args.limit < 0 or args.offset < 0 or (args.page is not None and args.page < 1):
        raise CliError("expected --limit >= 0 (0: every trial), --offset >= 0 and --page >= 1")
    if args.page is not None:
        if args.offset:
            raise CliError("give --page or --offset, not both")
        args.offset = (args.page - 1) * (args.limit or TRIALS_PAGE)
    store = _open(args.id)[1]
    total = store.count_trials(status=args.status)
    order = {"seq": "seq", "value": "final_value"}[args.sort]
    descending = args.desc
    if args.sort == "value" and not args.desc and maximizes(store.experiment()["config"]):
        descending = True  # the best first unless told otherwise (--asc)
    if args.asc:
        descending = False
    limit = args.limit or None
    trials = store.trials(status=args.status, limit=limit if limit is not None else -1, offset=args.offset,
                          order_by=order, descending=descending, nulls_last=True)
    rows = [[t["seq"], t["id"], t["status"], None if t["final_value"] is None else _value(t["final_value"]),
             _value(t["parameters"]), _duration(t["started_at"], t["ended_at"]), t["message"]] for t in trials]
    _table(["SEQ", "ID", "STATUS", "VALUE", "PARAMETERS", "DURATION", "MESSAGE"], rows)
    shown_to = args.offset + len(rows)
    if limit is not None and (args.offset or shown_to < total):
        what = f"{args.status} trials" if args.status else "trials"
        more = (f"; next: hpo trials {args.id} --offset {shown_to}{_trials_options(args)} (--limit 0: every trial)"
                if shown_to < total else "")
        print(f"{what} {args.offset + 1 if rows else args.offset}-{shown_to} of {total}{more}", file=sys.stderr)
    return 0


def _trials_options(args: argparse.Namespace) -> str:
    out = ""
    if args.status:
        out += f" --status {args.status}"
    if args.sort != "seq":
        out += f" --sort {args.sort}"
    if args.desc:
        out += " --desc"
    if args.asc:
        out += " --asc"
    if args.limit != TRIALS_PAGE:
        out += f" --limit {args.limit}"
    return out


def cmd_checkpoints(args: argparse.Namespace) -> int:
    """An experiment's checkpoints in the order they were saved (--best N: the N best kept ones, one per trial)."""
    store = _open(args.id)[1]
    rows = store.checkpoints(state=None if args.all else "COMPLETED")
    if args.best is not None:
        if args.best < 1:
            raise CliError(f"--best: got {args.best}, expected an integer >= 1")
        maximize = maximizes(store.experiment()["config"])
        best: dict[int, dict[str, Any]] = {}
        for c in rows:
            if c["value"] is not None and c["state"] == "COMPLETED":
                old = best.get(c["trial_seq"])
                if old is None or (c["value"] > old["value"] if maximize else c["value"] < old["value"]):
                    best[c["trial_seq"]] = c
        rows = sorted(best.values(), key=lambda c: c["value"], reverse=maximize)[:args.best]
    _table(["UUID", "TRIAL", "SEQ", "STEP", "VALUE", "SIZE", "STATE", "PATH"],
           [[c["uuid"], c["trial_id"], c["trial_seq"], c["steps_completed"], _value(c["value"]) if c["value"] is not None
             else None, _size(sum(c["resources"].values())), c["state"], c["location"]] for c in rows])
    return 0


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cmd_logs(args: argparse.Namespace) -> int:
    directory, store = _open(args.id)
    if args.line < 0 or (args.limit is not None and (args.limit < 1 or args.follow)):
        raise CliError("expected --line >= 0 and --limit >= 1, and no --limit with --follow")

    def ended() -> bool:
        info = store.experiment()
        return not _engine_alive(directory, info) or (
            args.trial is not None and (store.trial(trial_id) or {}).get("status") not in ACTIVE_STATES)
    if args.trial is None:
        path = directory / "engine.log"
    else:
        trial_id = _trial(store, args.id, args.trial)["id"]
        path = directory / "trials" / trial_id / ("stderr.log" if args.stderr else "stdout.log")
    if directory.resolve() not in path.resolve().parents:
        raise CliError(f"refusing to read {str(path)!r}: outside the experiment folder")
    if not args.follow and not path.exists():
        raise CliError(f"no log yet at {path}")
    stop = args.line + args.limit if args.limit is not None else None
    _print_log(path, args.line, stop, ended if args.follow else None)
    return 0


def _print_log(path: Path, start: int, stop: int | None, ended: Callable[[], bool] | None) -> None:
    """Print lines [start, stop) of ``path``; with ``ended``, keep printing what is appended until it is true."""
    while ended is not None and not path.exists():
        if ended():
            return
        time.sleep(0.2)
    buffer, seen = b"", 0

    def emit(lines: list[bytes]) -> bool:  # True once past ``stop``
        nonlocal seen
        for raw in lines:
            if seen >= start and (stop is None or seen < stop):
                sys.stdout.write(raw.decode("utf-8", "replace").rstrip("\r") + "\n")
            seen += 1
        return stop is not None and seen >= stop
    with open(path, "rb") as fh:
        while True:
            finished = ended is None or ended()  # checked before reading, so the last lines are read after it
            while chunk := fh.read(1 << 20):
                *lines, buffer = (buffer + chunk).split(b"\n")
                if emit(lines):
                    return
            if finished:
                emit([buffer] if buffer else [])
                return
            sys.stdout.flush()
            time.sleep(0.2)


def cmd_checkpoint_download(args: argparse.Namespace) -> int:
    """Copy a checkpoint's folder (any registered experiment's) to DIR; DIR already holding metadata.json is kept."""
    from hpo import client
    ckpt = client.get_checkpoint(args.uuid)
    there = (Path(args.dir) / "metadata.json").exists()
    path = ckpt.download(args.dir)
    print(f"{path} (already there)" if there else path)
    return 0


def cmd_model_create(args: argparse.Namespace) -> int:
    from hpo import client
    client.create_model(args.name, description=args.description)
    print(f"model {args.name} created")
    return 0


def cmd_model_register(args: argparse.Namespace) -> int:
    from hpo import client
    version = client.get_model(args.name).register_version(args.uuid)
    print(f"model {args.name} version {version.model_version}: checkpoint {version.checkpoint_uuid}")
    return 0


def cmd_model_list(args: argparse.Namespace) -> int:
    from hpo.model_registry import ModelRegistry
    with ModelRegistry() as registry:
        models = registry.list_models()
    _table(["NAME", "VERSIONS", "UPDATED", "DESCRIPTION"],
           [[m["name"], m["num_versions"], _when(m["last_updated_time"]), m["description"] or None] for m in models])
    return 0


def cmd_model_show(args: argparse.Namespace) -> int:
    from hpo.model_registry import ModelRegistry
    with ModelRegistry() as registry:
        model, versions = registry.get_model(args.name), registry.list_versions(args.name)
    print(f"model {_printable(model['name'])}: {_printable(model['description']) or '-'}; "
          f"metadata {_value(model['metadata'])}; {model['num_versions']} version(s)")
    _table(["VERSION", "CHECKPOINT", "EXPERIMENT", "TRIAL", "CREATED"],
           [[v["version"], v["checkpoint_uuid"], v["experiment_id"], v["trial_id"], _when(v["creation_time"])]
            for v in versions])
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Every trial as JSON or CSV, read and written a page of trials at a time (a CSV file is read twice: once
    for its columns), so that exporting 100,000 trials needs the memory of one page."""
    import math
    store = _open(args.id)[1]
    upto = store.max_seq()  # the trials there now, even if more land while it is written

    def records() -> Iterator[dict[str, Any]]:
        for t in store.iter_trials():
            if t["seq"] > upto:
                return
            yield {"trial_id": t["id"], "sequence_id": t["seq"], "status": t["status"], "parameter": t["parameters"],
                   "value": t["final"], "default": t["final_value"] if t["final_value"] is None or
                   math.isfinite(t["final_value"]) else None}
    count = 0
    with (open(args.output, "w", newline="", encoding="utf-8") if args.output
          else contextlib.nullcontext(sys.stdout)) as out:
        if args.format == "json":  # as json.dumps(records, indent=2), one record at a time
            for rec in records():
                out.write(("[\n" if not count else ",\n") + textwrap.indent(json.dumps(rec, indent=2), "  "))
                count += 1
            out.write("\n]\n" if count else "[]\n")
        else:
            count = _write_csv(records, out)
    if args.output:
        print(f"exported {count} trials to {args.output}", file=sys.stderr)
    return 0


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, (list, dict)) else value
    return out


def _write_csv(records: Callable[[], Iterator[dict[str, Any]]], out: Any) -> int:
    """One row per trial: id, seq, status, value, then the parameters flattened (``a.b`` for nested ones).
    ``records()`` is called twice: for the columns, then for the rows.  Returns the number of rows."""
    import csv
    base = ["trial_id", "sequence_id", "status", "value"]

    def row_of(r: dict[str, Any]) -> dict[str, Any]:
        row = {"trial_id": r["trial_id"], "sequence_id": r["sequence_id"], "status": r["status"], "value": r["default"]}
        row.update({(k if k not in base else f"parameter.{k}"): v for k, v in _flatten(r["parameter"], "", {}).items()})
        if isinstance(r["value"], dict):  # other metrics of a dict result
            row.update({f"final.{k}": v for k, v in _flatten(r["value"], "", {}).items() if k != "default"})
        return row
    fields: dict[str, None] = dict.fromkeys(base)
    for r in records():
        fields.update(dict.fromkeys(row_of(r)))
    writer = csv.DictWriter(out, fieldnames=list(fields), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    count = 0
    for r in records():
        writer.writerow(row_of(r))
        count += 1
    return count


def cmd_update(args: argparse.Namespace) -> int:
    changes = _limits(args)
    if not changes:
        raise CliError("nothing to update; give --concurrency, --max-trials and/or --duration")
    directory, store = _open(args.id)
    if (status := store.experiment()["status"]) in EXPERIMENT_END_STATES:
        raise CliError(f"experiment {args.id} has ended ({status}); to continue it with new limits: "
                       f"`hpo resume {args.id} {' '.join(_limit_options(args))}`")
    _client(args.id, "be updated")[0].patch("/experiment", changes)
    print(f"experiment {args.id}: " + ", ".join(f"{k} = {v}" for k, v in changes.items()))
    return 0


def cmd_kill(args: argparse.Namespace) -> int:
    directory, store = _open(args.id)
    trial_id, info = _trial(store, args.id, args.trial)["id"], store.experiment()
    if info["status"] not in EXPERIMENT_END_STATES and _end_abandoned(args.id, directory, info, trial_id):
        return 0
    _client(args.id, "have its trials killed")[0].post(f"/trials/{trial_id}/kill")
    print(f"trial {trial_id} of experiment {args.id} killed")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    import yaml

    def pruned(d: Any) -> Any:  # leave out unset (null) fields
        return {k: pruned(v) for k, v in d.items() if v is not None} if isinstance(d, dict) else d
    if _is_polyaxonfile(args.file[0]):
        from hpo.polyaxon.run_cli import compile_args
        args.python_module, args.project = None, None
        compiled = compile_args(args)
        config = compiled.config
        print(f"Polyaxonfile valid: tuner {config.tuner.name or config.tuner.class_name}, "
              f"{config.max_trial_number or 'every grid point as'} run(s), outputs: {', '.join(compiled.outputs) or 'none'}")
        if args.matrix:
            _print_space(config)
        return 0
    config = _load_config(args.file)
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml's: a 10,000-parameter space in well under 1 s
    print("Config valid\n\n" + yaml.dump(pruned(config.to_dict()), Dumper=dumper, sort_keys=False).rstrip())
    if args.matrix:
        _print_space(config)
    if config.training_service.platform == "kubernetes":
        _print_kubernetes_objects(config, dumper)
    if config.training_service.platform == "remote" and config.trial_roles:
        _check_remote_gang(config)
    return 0


def _is_polyaxonfile(path: str) -> bool:
    """Whether ``path`` is a Polyaxon v1 file (top-level ``kind: component`` or ``kind: operation``)."""
    from hpo.config import ConfigError, _read_yaml
    try:
        data = _read_yaml(Path(path))
    except ConfigError:
        return False  # reported by the config loader
    return isinstance(data, dict) and data.get("kind") in ("component", "operation")


def _check_remote_gang(config: Any) -> None:
    """A distributed trial over SSH: connect, check the gang fits the machines and that they reach each other."""
    import asyncio
    from hpo.config import ConfigError
    from hpo.experiment import _make_service
    from training_services.gang import gang_processes

    service = _make_service(config)

    class _Quiet:  # nothing runs: no event comes
        def __getattr__(self, name: str) -> Any:
            return lambda *a, **k: None

    async def run() -> list[str]:
        await service.start(_Quiet())
        try:
            service.check_gang(gang_processes(config.trial_roles, config.trial_command, config.trial_gpu_number,
                                              config.distribution))
            return await service.check_reachable()
        finally:
            await service.stop()

    try:
        lines = asyncio.run(run())
    except ValueError as exc:
        raise ConfigError(f"config.training_service: {exc}") from None
    print("\n# Machines reaching each other (a distributed trial's processes connect to each other):")
    print("\n".join(f"  {line}" for line in lines) or "  one machine: nothing to check")
    bad = [line for line in lines if "cannot reach" in line]
    if bad:
        raise ConfigError(f"config.training_service.machine_list: {bad[0]}; the machines of a distributed trial "
                          "must reach each other at their host over TCP")


def _print_kubernetes_objects(config: Any, dumper: Any) -> None:
    """What the first trial would create on the cluster (a dry run: nothing is sent)."""
    import yaml
    from hpo.config import ConfigError
    from hpo.templates import render_command
    from hpo.experiment import _make_service
    from tuners.registry import create_tuner
    tuner = create_tuner("random", {"seed": 0})
    tuner.update_search_space(config.search_space)
    parameters = tuner.generate_parameters(1)
    try:
        objects = _make_service(config).preview(
            experiment_id="example", command=render_command(config.trial_command, parameters), parameters=parameters,
            code_dir=config.trial_code_directory, gpu_number=config.trial_gpu_number,
            max_duration=config.max_trial_duration_seconds)
    except ValueError as exc:
        raise ConfigError(f"config.training_service: {exc}") from None
    print("\n# The first trial would create (experiment id 'example', sample parameters; nothing is sent):")
    print(yaml.dump_all(objects, Dumper=dumper, sort_keys=False, explicit_start=True).rstrip())


def _print_space(config: Any) -> None:
    """Polyaxon's ``check -m``: the matrix a grid search would run (first rows), or the dimensions."""
    import itertools
    import math
    from hpo.search_space import GridTooLargeError, parse_search_space
    space = parse_search_space(config.search_space)
    args = dict(config.tuner.class_args or {})
    tuner = (config.tuner.name or config.tuner.class_name or "").lower()
    if "logspace" in tuner:
        from tuners.logspace import discretise
        space = discretise(space, int(args.get("n", 5)))
    try:
        size = space.grid_size() if space.is_discrete else None
        why = "is continuous"
    except GridTooLargeError as exc:
        size, why = None, f"is too large ({exc})"
    if size is None:
        print(f"\nThe search space {_printable(why)}: it cannot be enumerated as a grid.  Dimensions:")
        for dim in space:
            print(f"  {_printable(dim.name)}: {_printable(dim.describe())}")
        return
    runs = size
    n_experiments = args.get("n_experiments")
    if isinstance(n_experiments, float) and n_experiments <= 1:
        runs = min(size, math.ceil(n_experiments * size))
    elif n_experiments is not None:
        runs = min(size, int(n_experiments))
    if config.max_trial_number is not None:
        runs = min(runs, config.max_trial_number)
    print("\nThe matrix definition is:")
    for point in itertools.islice(space.iter_grid(), _GRID_ROWS):
        print(point)
    if size > _GRID_ROWS:
        print(f"... and {size - _GRID_ROWS} more")
    method = args.get("search_method", "sequential")
    print(f"\nThe matrix-space has {size} point{'s' * (size != 1)}: {runs} experiment{'s' * (runs != 1)}, "
          f"with {config.trial_concurrency} concurrent run{'s' * (config.trial_concurrency != 1)}, "
          f"and a {method} search")


# -- parser ----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hpo", description="Hyperparameter optimisation experiments (nnictl-like).")
    parser.add_argument("--version", action="version", version=f"hpo {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, func: Callable[[argparse.Namespace], int], text: str, *ids: str) -> Any:
        p = sub.add_parser(name, help=text, description=text)
        p.set_defaults(func=func)
        for positional in ids:
            p.add_argument(positional)
        return p

    def detachable(p: argparse.ArgumentParser) -> None:
        p.add_argument("--port", type=int, default=8080, help="dashboard port (default 8080)")
        p.add_argument("--foreground", action="store_true",
                       help="run in this process with a progress bar (Ctrl-C stops it gracefully)")
        p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)

    p = command("create", cmd_create, "Validate config files and start an experiment (detached by default).")
    p.add_argument("--config", "-c", action="append", required=True, metavar="FILE",
                   help="YAML/JSON config; repeat to merge (later files win)")
    detachable(p)
    p.add_argument("--debug", action="store_true", help="debug logging")
    p = command("resume", cmd_resume, "Continue a stopped, crashed or finished experiment (detached by default); "
                "--max-trials / --duration extend a finished one.", "id")
    detachable(p)
    _add_limit_options(p, new="new ")
    p = command("view", cmd_view, "Serve a stored experiment's dashboard read-only until Ctrl-C.", "id")
    p.add_argument("--port", type=int, help=f"dashboard port (default {_VIEW_PORT}, or the next free one)")
    p = command("stop", cmd_stop, "Stop a running experiment (the only one, if no id is given), or every one "
                "with --all.")
    p.add_argument("id", nargs="?")
    p.add_argument("--all", action="store_true", help="stop every running experiment")
    p = command("list", cmd_list, "List running experiments and created ones not yet started (--all: every one).")
    p.add_argument("--all", action="store_true", help="list every experiment")
    p.add_argument("--project", metavar="NAME", help="only the experiments of this project (config key project)")
    p = command("trials", cmd_trials, f"List an experiment's trials, {TRIALS_PAGE} at a time (a line on stderr says "
                "how to see the next ones).", "id")
    p.add_argument("--status", type=str.upper, choices=TRIAL_STATES, help="only trials in this state")
    p.add_argument("--limit", type=int, default=TRIALS_PAGE, metavar="N",
                   help=f"at most N trials (default {TRIALS_PAGE}; 0: every trial)")
    p.add_argument("--offset", type=int, default=0, metavar="N", help="skip the first N trials")
    p.add_argument("--page", type=int, metavar="P", help="the P-th page of --limit trials (from 1)")
    p.add_argument("--sort", choices=("seq", "value"), default="seq",
                   help="by sequence number (default) or by final value, the best first")
    order = p.add_mutually_exclusive_group()
    order.add_argument("--desc", action="store_true", help="descending (by seq: the latest first)")
    order.add_argument("--asc", action="store_true", help="ascending (by value: the lowest first)")
    p = command("checkpoints", cmd_checkpoints, "List an experiment's checkpoints (kept ones; --all: every one).", "id")
    p.add_argument("--best", type=int, metavar="N", help="the N best, at most one per trial")
    p.add_argument("--all", action="store_true", help="also deleted ones and ones that could not be saved")
    p_checkpoint = command("checkpoint", lambda a: _usage(p_checkpoint), "Checkpoint actions: download.")
    nested = p_checkpoint.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    p = nested.add_parser("download", help="copy a checkpoint's folder to DIR", description="Copy a checkpoint's "
                          "folder to DIR (kept as it is if DIR already holds its metadata.json).")
    p.set_defaults(func=cmd_checkpoint_download)
    p.add_argument("uuid")
    p.add_argument("dir")
    p_model = command("model", lambda a: _usage(p_model), "The model registry: create, register, list, show.")
    nested = p_model.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    for name, func, text, positionals in (
            ("create", cmd_model_create, "Register a new model.", ("name",)),
            ("register", cmd_model_register, "Add a version of model NAME pointing at checkpoint UUID.",
             ("name", "uuid")),
            ("list", cmd_model_list, "List the registered models.", ()),
            ("show", cmd_model_show, "A model and its versions.", ("name",))):
        p = nested.add_parser(name, help=text, description=text)
        p.set_defaults(func=func)
        for positional in positionals:
            p.add_argument(positional)
        if name == "create":
            p.add_argument("--description", default="", help="a description of the model")
    p = command("logs", cmd_logs, "The engine log, or a trial's output (TRIAL: id or sequence number).", "id")
    p.add_argument("trial", nargs="?")
    p.add_argument("--stderr", action="store_true", help="the trial's stderr instead of its stdout")
    p.add_argument("--line", type=int, default=0, help="first line to show, counted from 0 (default 0)")
    p.add_argument("--limit", type=int, help="show at most this many lines")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing until the trial/experiment ends")
    p = command("export", cmd_export, "Export trials: parameters, status, final value.", "id")
    p.add_argument("--format", choices=("csv", "json"), default="csv")
    p.add_argument("--output", "-o", metavar="FILE", help="write here instead of stdout")
    _add_limit_options(command("update", cmd_update, "Change a running experiment's limits.", "id"))
    command("kill", cmd_kill, "Kill a running trial (TRIAL: id or sequence number).", "id", "trial")
    from hpo.polyaxon.run_cli import add_run_parser
    add_run_parser(sub)
    p = command("check", cmd_check, "Validate config files; print the merged config (and the search space).")
    p.add_argument("-f", "--file", action="append", required=True, metavar="FILE", help="repeat to merge")
    p.add_argument("-m", "--matrix", action="store_true", help="show the search space size and grid")
    p.add_argument("-P", "--param", action="append", metavar="NAME=VALUE", help="a Polyaxon input's value")
    return parser


def _usage(parser: argparse.ArgumentParser) -> int:
    """A command group given without its action: print its help, exit 2."""
    parser.print_help(sys.stderr)
    return 2


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("hpo")
    except PackageNotFoundError:
        return "(not installed)"


def _user_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [CliError, ValueError, LookupError, OSError, StoreError]
    for module, name in (("hpo.experiment", "ExperimentError"), ("hpo.api_client", "ApiError")):
        if module in sys.modules:
            errors.append(getattr(sys.modules[module], name))
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `hpo export ID | head`
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - no flush error at exit
        return 0
    except Exception as exc:
        if not isinstance(exc, _user_errors()) or os.environ.get("HPO_DEBUG"):
            raise
        print(f"hpo: error: {_printable(' '.join(str(exc).split())) or type(exc).__name__}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
