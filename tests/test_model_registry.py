"""The model registry (hpo.model_registry): CRUD, user errors, ordering, and real multi-process concurrency."""
from __future__ import annotations

import multiprocessing
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from hpo.model_registry import ModelExists, ModelNotFound, ModelRegistry, VersionNotFound

SPAWN = multiprocessing.get_context("spawn")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("HPO_HOME", str(home))
    return home


@pytest.fixture
def reg(home: Path):
    registry = ModelRegistry()
    yield registry
    registry.close()


def one_line(exc: BaseException) -> str:
    message = str(exc)
    assert message and "\n" not in message
    return message


# --- files ----------------------------------------------------------------------------------------------

def test_reads_of_a_missing_file_create_nothing(home: Path, reg: ModelRegistry) -> None:
    assert reg.path == home / "models.db"
    assert reg.list_models() == []
    assert reg.registered_checkpoints() == set()
    with pytest.raises(ModelNotFound):
        reg.get_model("m")
    with pytest.raises(ModelNotFound):
        reg.get_version("m")
    with pytest.raises(ModelNotFound):
        reg.list_versions("m")
    assert not home.exists()


def test_first_write_creates_a_wal_file(home: Path, reg: ModelRegistry) -> None:
    reg.create_model("m")
    assert (home / "models.db").exists()
    assert [p.name for p in home.iterdir() if p.name.endswith(".tmp")] == []
    conn = sqlite3.connect(home / "models.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
    # another registry (another process, in effect) sees it
    with ModelRegistry(home / "models.db") as other:
        assert other.get_model("m")["name"] == "m"


def test_explicit_path(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "reg.db"
    with ModelRegistry(path) as registry:
        registry.create_model("m")
    assert path.exists()


# --- models ---------------------------------------------------------------------------------------------

def test_model_crud(reg: ModelRegistry) -> None:
    before = time.time()
    model = reg.create_model("mnist", "a digit model", metadata={"framework": "torch"}, labels=["cv", "prod"])
    assert model == {"name": "mnist", "description": "a digit model", "metadata": {"framework": "torch"},
                     "labels": ["cv", "prod"], "archived": False, "creation_time": model["creation_time"],
                     "last_updated_time": model["last_updated_time"], "num_versions": 0}
    assert before <= model["creation_time"] <= model["last_updated_time"] <= time.time()
    assert reg.get_model("mnist") == model

    updated = reg.set_description("mnist", "better")
    assert updated["description"] == "better"
    assert updated["last_updated_time"] >= model["last_updated_time"]
    assert updated["creation_time"] == model["creation_time"]

    reg.delete_model("mnist")
    with pytest.raises(ModelNotFound):
        reg.get_model("mnist")
    assert reg.list_models() == []


def test_metadata_merge_is_top_level(reg: ModelRegistry) -> None:
    reg.create_model("m", metadata={"a": 1, "nested": {"x": 1, "y": 2}})
    merged = reg.add_metadata("m", {"b": 2, "nested": {"z": 3}})
    assert merged["metadata"] == {"a": 1, "b": 2, "nested": {"z": 3}}
    assert reg.remove_metadata("m", ["a", "not-there"])["metadata"] == {"b": 2, "nested": {"z": 3}}
    assert reg.get_model("m")["metadata"] == {"b": 2, "nested": {"z": 3}}


def test_labels_replace_and_filter(reg: ModelRegistry) -> None:
    reg.create_model("alpha", labels=["a", "b"])
    reg.create_model("beta", labels=["b"])
    reg.create_model("gamma")
    assert reg.set_labels("gamma", ["c", "b", "c"])["labels"] == ["c", "b"]
    assert reg.set_labels("alpha", ["a"])["labels"] == ["a"]
    assert [m["name"] for m in reg.list_models(labels=["b"])] == ["beta", "gamma"]
    assert [m["name"] for m in reg.list_models(labels=["b", "c"])] == ["gamma"]
    assert [m["name"] for m in reg.list_models(labels=[])] == ["alpha", "beta", "gamma"]
    assert [m["name"] for m in reg.list_models(name="ET")] == ["beta"]
    assert [m["name"] for m in reg.list_models(name="a", labels=["b"])] == ["beta", "gamma"]


def test_archive(reg: ModelRegistry) -> None:
    reg.create_model("m")
    assert reg.archive("m")["archived"] is True
    assert reg.list_models()[0]["archived"] is True
    with pytest.raises(ValueError, match="archived") as info:
        reg.register_version("m", "ckpt-1")
    one_line(info.value)
    assert reg.unarchive("m")["archived"] is False
    assert reg.register_version("m", "ckpt-1")["version"] == 1


def test_list_models_ordering(reg: ModelRegistry) -> None:
    for name, description, versions in [("b", "zzz", 2), ("a", "mmm", 0), ("c", "aaa", 1)]:
        reg.create_model(name, description)
        for i in range(versions):
            reg.register_version(name, f"{name}-{i}")
        time.sleep(0.01)
    names = lambda **kw: [m["name"] for m in reg.list_models(**kw)]  # noqa: E731
    assert names() == ["a", "b", "c"]
    assert names(order_by="desc") == ["c", "b", "a"]
    assert names(sort_by="description") == ["c", "a", "b"]
    assert names(sort_by="creation_time") == ["b", "a", "c"]
    assert names(sort_by="creation_time", order_by="DESC") == ["c", "a", "b"]
    assert names(sort_by="num_versions", order_by="desc") == ["b", "c", "a"]
    reg.set_description("a", "touched")
    assert names(sort_by="last_updated_time", order_by="desc")[0] == "a"
    with pytest.raises(ValueError, match="sort_by must be one of") as info:
        reg.list_models(sort_by="size")
    one_line(info.value)
    with pytest.raises(ValueError, match="order_by must be 'asc' or 'desc'"):
        reg.list_models(order_by="up")
    with pytest.raises(ValueError, match="order_by must be 'asc' or 'desc'"):
        reg.list_versions("a", order_by=["asc"])  # type: ignore[arg-type]
    assert names(order_by="Descending") == ["c", "b", "a"]


def test_delete_model_refuses_while_it_has_versions(reg: ModelRegistry) -> None:
    reg.create_model("m")
    reg.register_version("m", "ckpt-1")
    with pytest.raises(ValueError, match="has 1 version") as info:
        reg.delete_model("m")
    assert "force=True" in one_line(info.value)
    assert reg.get_model("m")["num_versions"] == 1
    reg.delete_model("m", force=True)
    assert reg.list_models() == []
    assert reg.registered_checkpoints() == set()
    reg.create_model("m")  # the name is free again, and numbering restarts
    assert reg.register_version("m", "ckpt-2")["version"] == 1


# --- versions -------------------------------------------------------------------------------------------

def test_versions(reg: ModelRegistry) -> None:
    reg.create_model("m")
    assert reg.get_version("m") is None
    assert reg.list_versions("m") == []
    v1 = reg.register_version("m", "ckpt-a", experiment_id="exp1", trial_id=3, comment="first",
                              metadata={"acc": 0.9})
    assert v1 == {"model_name": "m", "version": 1, "checkpoint_uuid": "ckpt-a", "experiment_id": "exp1",
                  "trial_id": "3", "name": None, "comment": "first", "notes": None, "metadata": {"acc": 0.9},
                  "creation_time": v1["creation_time"], "last_updated_time": v1["last_updated_time"]}
    v2 = reg.register_version("m", "ckpt-b")
    v3 = reg.register_version("m", "ckpt-a")  # the same checkpoint may back several versions
    assert [v["version"] for v in (v1, v2, v3)] == [1, 2, 3]
    assert reg.get_version("m")["version"] == 3
    assert reg.get_version("m", -1) == reg.get_version("m", 3)
    assert reg.get_version("m", 1) == v1
    assert reg.get_model("m")["num_versions"] == 3
    assert [v["version"] for v in reg.list_versions("m")] == [3, 2, 1]
    assert [v["version"] for v in reg.list_versions("m", order_by="asc")] == [1, 2, 3]

    assert reg.set_version_name("m", 2, "candidate")["name"] == "candidate"
    assert reg.set_version_notes("m", 2, "looks good")["notes"] == "looks good"
    assert reg.get_version("m", 2)["name"] == "candidate"

    assert reg.registered_checkpoints() == {"ckpt-a", "ckpt-b"}
    reg.delete_version("m", 3)
    assert reg.registered_checkpoints() == {"ckpt-a", "ckpt-b"}  # version 1 still points at ckpt-a
    reg.delete_version("m", 1)
    assert reg.registered_checkpoints() == {"ckpt-b"}
    assert [v["version"] for v in reg.list_versions("m")] == [2]
    assert reg.register_version("m", "ckpt-c")["version"] == 3  # MAX(version) + 1, as in Determined
    reg.delete_version("m", 2)
    reg.delete_version("m", 3)
    assert reg.get_version("m") is None


def test_registering_bumps_the_models_last_updated_time(reg: ModelRegistry) -> None:
    model = reg.create_model("m")
    time.sleep(0.01)
    reg.register_version("m", "ckpt")
    assert reg.get_model("m")["last_updated_time"] > model["last_updated_time"]


# --- user errors ----------------------------------------------------------------------------------------

def test_unknown_model(reg: ModelRegistry) -> None:
    reg.create_model("other")
    calls = [lambda: reg.get_model("nope"), lambda: reg.set_description("nope", "x"),
             lambda: reg.add_metadata("nope", {"a": 1}), lambda: reg.set_labels("nope", []),
             lambda: reg.archive("nope"), lambda: reg.delete_model("nope"),
             lambda: reg.register_version("nope", "ckpt"), lambda: reg.get_version("nope"),
             lambda: reg.list_versions("nope"), lambda: reg.set_version_name("nope", 1, "x"),
             lambda: reg.delete_version("nope", 1)]
    for call in calls:
        with pytest.raises(ModelNotFound) as info:
            call()
        assert "'nope'" in one_line(info.value)


def test_duplicate_name(reg: ModelRegistry) -> None:
    reg.create_model("m", "original")
    with pytest.raises(ModelExists) as info:
        reg.create_model("m", "copy")
    assert "'m' already exists" in one_line(info.value)
    assert isinstance(info.value, ValueError)
    assert reg.get_model("m")["description"] == "original"


@pytest.mark.parametrize("name,needle", [("", "must not be empty"), ("   ", "must not be empty"),
                                         ("a/b", "must not contain '/'"), ("x" * 257, "at most 256"),
                                         (None, "must be a string"), (3, "must be a string")])
def test_bad_names(reg: ModelRegistry, name: Any, needle: str) -> None:
    with pytest.raises(ValueError, match=needle) as info:
        reg.create_model(name)
    assert "model name" in one_line(info.value)
    with pytest.raises(ValueError, match=needle):
        reg.get_model(name)
    assert reg.list_models() == []


def test_longest_name_is_fine(reg: ModelRegistry) -> None:
    assert reg.create_model("x" * 256)["name"] == "x" * 256


def test_unknown_version(reg: ModelRegistry) -> None:
    reg.create_model("m")
    reg.register_version("m", "ckpt")
    for call in (lambda: reg.get_version("m", 2), lambda: reg.set_version_name("m", 7, "x"),
                 lambda: reg.set_version_notes("m", 7, "x"), lambda: reg.delete_version("m", 7)):
        with pytest.raises(VersionNotFound) as info:
            call()
        assert "'m' has no version" in one_line(info.value)
    for bad in (0, -2, "1", True, 1.0):
        with pytest.raises(ValueError, match="version must be") as info:
            reg.get_version("m", bad)  # type: ignore[arg-type]
        one_line(info.value)


@pytest.mark.parametrize("kwargs,needle", [
    ({"metadata": ["a"]}, "metadata must be a dict"),
    ({"metadata": {1: "a"}}, "metadata keys must be strings"),
    ({"metadata": {"a": float("nan")}}, "JSON-serialisable"),
    ({"metadata": {"a": object()}}, "JSON-serialisable"),
    ({"labels": "cv"}, "labels must be a list"),
    ({"labels": ["ok", 3]}, "labels must be non-empty strings"),
    ({"description": None}, "description must be a string"),
])
def test_bad_model_fields(reg: ModelRegistry, kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle) as info:
        reg.create_model("m", **kwargs)
    one_line(info.value)
    assert reg.list_models() == []


def test_bad_version_fields(reg: ModelRegistry) -> None:
    reg.create_model("m")
    with pytest.raises(ValueError, match="checkpoint_uuid must be a non-empty string"):
        reg.register_version("m", "")
    with pytest.raises(ValueError, match="experiment_id must be a string"):
        reg.register_version("m", "ckpt", experiment_id=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="metadata must be a dict"):
        reg.register_version("m", "ckpt", metadata="x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="keys must be a list of strings"):
        reg.remove_metadata("m", "a")  # type: ignore[arg-type]
    assert reg.get_version("m") is None  # nothing half-written


def test_failed_write_rolls_back_and_registry_stays_usable(reg: ModelRegistry) -> None:
    reg.create_model("m")
    with pytest.raises(ModelExists):
        reg.create_model("m")
    reg.register_version("m", "ckpt")
    reg.close()
    reg.close()  # idempotent
    assert reg.get_version("m")["checkpoint_uuid"] == "ckpt"  # reopens on use


# --- concurrency (real processes) ---------------------------------------------------------------------

def _register_many(path: str, worker: int, count: int, barrier: Any, results: Any) -> None:
    try:
        registry = ModelRegistry(Path(path))
        barrier.wait(timeout=60)
        versions = [registry.register_version("shared", f"ckpt-{worker}-{i}")["version"] for i in range(count)]
        registry.close()
        results.put((worker, versions, None))
    except BaseException as exc:  # reported to the test, which fails on it
        results.put((worker, [], f"{type(exc).__name__}: {exc}"))


def _create_same(path: str, name: str, barrier: Any, results: Any) -> None:
    try:
        registry = ModelRegistry(Path(path))
        barrier.wait(timeout=60)
        registry.create_model(name)
        results.put("created")
    except ModelExists:
        results.put("exists")
    except BaseException as exc:
        results.put(f"{type(exc).__name__}: {exc}")


def _hold_write_transaction(path: str, locked: Any, release: Any) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO models (name, creation_time, last_updated_time) VALUES ('uncommitted', 0, 0)")
    locked.set()
    release.wait(60)
    time.sleep(0.3)  # still holding the lock when the main process starts writing
    conn.execute("COMMIT")
    conn.close()


def _run(processes: list[Any]) -> None:
    for proc in processes:
        proc.start()
    for proc in processes:
        proc.join(120)
        assert proc.exitcode == 0, f"{proc.name} exited with {proc.exitcode}"


def test_concurrent_register_version(home: Path) -> None:
    path = home / "models.db"
    with ModelRegistry(path) as registry:
        registry.create_model("shared")
    barrier, results = SPAWN.Barrier(4), SPAWN.Queue()
    procs = [SPAWN.Process(target=_register_many, args=(str(path), w, 25, barrier, results)) for w in range(4)]
    _run(procs)
    reports = [results.get(timeout=10) for _ in procs]
    assert [error for _, _, error in reports if error] == []
    every = sorted(v for _, versions, _ in reports for v in versions)
    assert every == list(range(1, 101))
    for _, versions, _ in reports:
        assert versions == sorted(versions) and len(versions) == 25
    with ModelRegistry(path) as registry:
        listed = registry.list_versions("shared", order_by="asc")
        assert [v["version"] for v in listed] == list(range(1, 101))
        assert len({v["checkpoint_uuid"] for v in listed}) == 100
        assert registry.get_model("shared")["num_versions"] == 100
        by_worker = {w: versions for w, versions, _ in reports}
        for v in listed:  # each version points at the checkpoint its worker registered under that number
            _, worker, i = v["checkpoint_uuid"].split("-")
            assert by_worker[int(worker)][int(i)] == v["version"]


def test_two_processes_create_the_same_model(home: Path) -> None:
    path = home / "models.db"  # round 0 also races to create the file itself
    for round_ in range(3):
        barrier, results = SPAWN.Barrier(2), SPAWN.Queue()
        procs = [SPAWN.Process(target=_create_same, args=(str(path), f"model-{round_}", barrier, results))
                 for _ in range(2)]
        _run(procs)
        assert sorted(results.get(timeout=10) for _ in procs) == ["created", "exists"]
    with ModelRegistry(path) as registry:
        assert [m["name"] for m in registry.list_models()] == ["model-0", "model-1", "model-2"]


def test_reader_is_not_blocked_by_a_writers_transaction(home: Path) -> None:
    path = home / "models.db"
    with ModelRegistry(path) as registry:
        registry.create_model("committed")
        registry.register_version("committed", "ckpt-1")
    locked, release = SPAWN.Event(), SPAWN.Event()
    writer = SPAWN.Process(target=_hold_write_transaction, args=(str(path), locked, release))
    writer.start()
    try:
        assert locked.wait(60), "the writer did not take its lock"
        reader = ModelRegistry(path)
        started = time.monotonic()
        assert [m["name"] for m in reader.list_models()] == ["committed"]
        assert reader.get_model("committed")["num_versions"] == 1
        assert reader.get_version("committed")["checkpoint_uuid"] == "ckpt-1"
        assert reader.registered_checkpoints() == {"ckpt-1"}
        with pytest.raises(ModelNotFound):
            reader.get_model("uncommitted")
        assert time.monotonic() - started < 2.0  # answered at once, not after a busy wait
        # a second writer waits for the lock (busy timeout) rather than failing
        release.set()
        assert reader.register_version("committed", "ckpt-2")["version"] == 2
        assert {m["name"] for m in reader.list_models()} == {"committed", "uncommitted"}
        reader.close()
    finally:
        release.set()
        writer.join(60)
    assert writer.exitcode == 0
