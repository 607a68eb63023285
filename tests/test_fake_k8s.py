"""The fake Kubernetes cluster (tests/fake_k8s) driven by the real kubernetes_asyncio client.

Each test starts its own one-node cluster; pods run as local process groups, so every test also
checks that nothing it started outlives the cluster.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import psutil
import pytest

pytest.importorskip("kubernetes_asyncio")
import aiohttp  # noqa: E402
from kubernetes_asyncio import client, config, watch  # noqa: E402
from kubernetes_asyncio.client.exceptions import ApiException  # noqa: E402

from tests.fake_k8s import FakeCluster  # noqa: E402

PY = sys.executable
NS = "default"


# -- helpers ------------------------------------------------------------------------------------
@pytest.fixture
def cluster(tmp_path: Path) -> FakeCluster:
    c = FakeCluster(root=tmp_path / "cluster", capacity={"cpu": "4", "memory": "8Gi",
                                                          "nvidia.com/gpu": "0"},
                    token="test-token", tls=False, history_limit=1000)
    c.start()
    yield c
    c.stop()
    assert_no_survivors(c)


def assert_no_survivors(c: FakeCluster) -> None:
    deadline = time.time() + 5
    while c.all_pod_processes() and time.time() < deadline:
        time.sleep(0.05)
    assert c.all_pod_processes() == []


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@contextlib.asynccontextmanager
async def api(c: FakeCluster, kubeconfig: Path | None = None,
              context: str = "fake") -> AsyncIterator[client.ApiClient]:
    cfg = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig or c.kubeconfig), context=context,
                                  client_configuration=cfg)
    async with client.ApiClient(cfg) as a:
        yield a


def raw_session(token: str = "test-token") -> aiohttp.ClientSession:
    return aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"})


def wait(pred: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def await_(pred: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = pred()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def job_body(name: str, script: str, **spec: Any) -> dict[str, Any]:
    pod_spec = spec.pop("pod_spec", {})
    container = {"name": "main", "image": "python:3.11", "command": [PY, "-u", "-c", script]}
    container.update(spec.pop("container", {}))
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "labels": {"app": "hpo"}},
            "spec": {"backoffLimit": 0, **spec,
                     "template": {"metadata": {"labels": {"trial": name}},
                                  "spec": {"restartPolicy": "Never", "containers": [container],
                                           **pod_spec}}}}


def job_condition(c: FakeCluster, name: str) -> dict[str, Any] | None:
    for j in c.objects("jobs"):
        if j["metadata"]["name"] == name:
            for cond in (j.get("status") or {}).get("conditions") or []:
                if cond["type"] in ("Complete", "Failed") and cond["status"] == "True":
                    return cond
    return None


def pods_of(c: FakeCluster, job: str) -> list[dict[str, Any]]:
    return c.objects("pods", label_selector=f"job-name={job}")


def running_pod(c: FakeCluster, job: str) -> dict[str, Any]:
    return wait(lambda: next((p for p in pods_of(c, job)
                              if p["status"].get("phase") == "Running"), None), 10,
                f"a running pod of {job}")


def error_body(exc: ApiException) -> dict[str, Any]:
    return json.loads(exc.body)


# -- API server -----------------------------------------------------------------------------------
def test_crud_resource_versions_and_status_errors(cluster: FakeCluster) -> None:
    async def main() -> None:
        async with api(cluster) as a:
            core = client.CoreV1Api(a)
            batch = client.BatchV1Api(a)
            rvs = []
            for i in range(3):
                cm = await core.create_namespaced_config_map(NS, {
                    "metadata": {"name": f"cm{i}", "labels": {"i": str(i)}}, "data": {"k": "v"}})
                rvs.append(int(cm.metadata.resource_version))
                assert cm.metadata.uid and cm.metadata.creation_timestamp
            assert rvs == sorted(rvs) and len(set(rvs)) == 3
            listing = await core.list_namespaced_config_map(NS)
            assert int(listing.metadata.resource_version) >= rvs[-1]
            assert [x.metadata.name for x in listing.items] == ["cm0", "cm1", "cm2"]
            gen = await core.create_namespaced_config_map(NS, {"metadata": {"generateName": "g-"}})
            assert gen.metadata.name.startswith("g-") and len(gen.metadata.name) == 7

            with pytest.raises(ApiException) as e:
                await batch.read_namespaced_job("x", NS)
            assert e.value.status == 404
            assert error_body(e.value) == {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": 'jobs.batch "x" not found', "reason": "NotFound",
                "details": {"name": "x", "group": "batch", "kind": "jobs"}, "code": 404}
            with pytest.raises(ApiException) as e:
                await core.create_namespaced_config_map(NS, {"metadata": {"name": "cm0"}})
            assert e.value.status == 409 and error_body(e.value)["reason"] == "AlreadyExists"

            # PUT with optimistic concurrency, merge / strategic / json patches
            cm0 = await core.read_namespaced_config_map("cm0", NS)
            cm0.data = {"k": "v2"}
            put = await core.replace_namespaced_config_map("cm0", NS, cm0)
            assert int(put.metadata.resource_version) > int(cm0.metadata.resource_version)
            cm0.data = {"k": "stale"}
            with pytest.raises(ApiException) as e:
                await core.replace_namespaced_config_map("cm0", NS, cm0)
            assert e.value.status == 409 and error_body(e.value)["reason"] == "Conflict"
            patched = await core.patch_namespaced_config_map(
                "cm0", NS, {"metadata": {"labels": {"x": "y"}}, "data": {"k2": "w"}})
            assert patched.data == {"k": "v2", "k2": "w"} and patched.metadata.labels["x"] == "y"
            patched = await core.patch_namespaced_config_map(
                "cm0", NS, [{"op": "remove", "path": "/data/k"}])
            assert patched.data == {"k2": "w"}
            patched = await core.patch_namespaced_config_map(
                "cm0", NS, {"data": {"k2": None}}, _content_type="application/merge-patch+json")
            assert not patched.data

            # 422 Invalid with causes
            for body in ({"metadata": {"name": "Bad_Name"}},
                         {"metadata": {"name": "ok", "labels": {"a": "bad value!"}}},
                         {"metadata": {"name": "big"}, "data": {"x": "a" * (1024 * 1024 + 1)}}):
                with pytest.raises(ApiException) as e:
                    await core.create_namespaced_config_map(NS, body)
                assert e.value.status == 422, body["metadata"]
                err = error_body(e.value)
                assert err["reason"] == "Invalid" and err["details"]["causes"]
            for tweak in ({"pod_spec": {"restartPolicy": "Always"}},
                          {"podFailurePolicy": {"rules": []}, "pod_spec":
                           {"restartPolicy": "OnFailure"}}):
                with pytest.raises(ApiException) as e:
                    await batch.create_namespaced_job(NS, job_body("j", "pass", **tweak))
                assert e.value.status == 422
                assert error_body(e.value)["details"]["causes"][0]["field"] == \
                    "spec.template.spec.restartPolicy"
            bad = job_body("j", "pass")
            bad["spec"]["template"]["spec"]["containers"] = []
            with pytest.raises(ApiException) as e:
                await batch.create_namespaced_job(NS, bad)
            assert e.value.status == 422
            assert error_body(e.value)["message"].startswith('Job.batch "j" is invalid')

            # delete a configmap
            status = await core.delete_namespaced_config_map("cm1", NS)
            assert status.status == "Success"
            with pytest.raises(ApiException) as e:
                await core.delete_namespaced_config_map("cm1", NS)
            assert e.value.status == 404

        async with raw_session("wrong") as s:
            async with s.get(f"{cluster.url}/api/v1/namespaces/default/pods") as r:
                assert r.status == 401 and (await r.json())["reason"] == "Unauthorized"
        async with raw_session() as s:
            base = f"{cluster.url}/api/v1/namespaces/default/configmaps"
            async with s.post(base, data=b"{not json",
                              headers={"Content-Type": "application/json"}) as r:
                assert r.status == 400 and (await r.json())["reason"] == "BadRequest"
            async with s.post(f"{base}/cm0") as r:
                assert r.status == 405
            async with s.get(f"{cluster.url}/version") as r:
                assert (await r.json())["gitVersion"].startswith("v1.")
    run(main())
    assert cluster.requests[("create", "configmaps")] >= 4
    assert cluster.requests[("patch", "configmaps")] == 3


def test_label_and_field_selectors(cluster: FakeCluster) -> None:
    async def main() -> None:
        async with api(cluster) as a:
            core = client.CoreV1Api(a)
            for name, labels in [("a", {"env": "prod", "tier": "web"}),
                                 ("b", {"env": "dev", "tier": "db"}),
                                 ("c", {"env": "qa"}), ("d", {})]:
                await core.create_namespaced_config_map(NS, {"metadata": {"name": name,
                                                                          "labels": labels}})

            async def names(sel: str) -> list[str]:
                out = await core.list_namespaced_config_map(NS, label_selector=sel)
                return [x.metadata.name for x in out.items]
            assert await names("env=prod") == ["a"]
            assert await names("env==dev") == ["b"]
            assert await names("env!=prod") == ["b", "c", "d"]
            assert await names("env in (prod, qa)") == ["a", "c"]
            assert await names("env notin (prod,qa)") == ["b", "d"]
            assert await names("tier") == ["a", "b"]
            assert await names("!tier") == ["c", "d"]
            assert await names("env,tier=db") == ["b"]
            out = await core.list_namespaced_config_map(NS, field_selector="metadata.name=c")
            assert [x.metadata.name for x in out.items] == ["c"]
            out = await core.list_namespaced_config_map(NS, field_selector="metadata.name!=c")
            assert len(out.items) == 3
            for bad in ("env in prod", "=x", "a b c"):
                with pytest.raises(ApiException) as e:
                    await core.list_namespaced_config_map(NS, label_selector=bad)
                assert e.value.status == 400 and error_body(e.value)["reason"] == "BadRequest"
    run(main())
    assert [o["metadata"]["name"] for o in cluster.objects("configmaps", label_selector="env")] \
        == ["a", "b", "c"]


def test_watch_resume_bookmarks_and_selector_transitions(cluster: FakeCluster) -> None:
    async def main() -> None:
        async with api(cluster) as a:
            core = client.CoreV1Api(a)
            await core.create_namespaced_config_map(NS, {"metadata": {"name": "pre",
                                                                      "labels": {"w": "1"}}})
            rv = (await core.list_namespaced_config_map(NS)).metadata.resource_version
            await core.create_namespaced_config_map(NS, {"metadata": {"name": "x",
                                                                      "labels": {"w": "1"}}})
            await core.patch_namespaced_config_map("x", NS, {"metadata": {"labels": {"w": "2"}}})
            await core.patch_namespaced_config_map("x", NS, {"metadata": {"labels": {"w": "1"}}})
            await core.delete_namespaced_config_map("x", NS)
            seen = []
            w = watch.Watch()
            async for ev in w.stream(core.list_namespaced_config_map, NS, label_selector="w=1",
                                     resource_version=rv, allow_watch_bookmarks=True,
                                     timeout_seconds=3):
                obj = ev["raw_object"]
                seen.append((ev["type"], obj["metadata"].get("name"),
                             int(obj["metadata"]["resourceVersion"])))
                if ev["type"] == "BOOKMARK":
                    break
            types = [(t, n) for t, n, _ in seen]
            assert types == [("ADDED", "x"), ("DELETED", "x"), ("ADDED", "x"), ("DELETED", "x"),
                             ("BOOKMARK", None)]
            assert [r for *_, r in seen] == sorted(r for *_, r in seen)
            # the DELETED event of a real delete carries a fresh RV
            assert seen[3][2] > seen[2][2]
            # rv unset: current objects as ADDED first
            w = watch.Watch()
            first = []
            async for ev in w.stream(core.list_namespaced_config_map, NS, timeout_seconds=1):
                first.append((ev["type"], ev["object"].metadata.name))
            assert first == [("ADDED", "pre")]
    run(main())
    assert cluster.requests[("watch", "configmaps")] == 2


def test_watch_compaction_answers_410(cluster: FakeCluster) -> None:
    async def main() -> None:
        async with api(cluster) as a:
            core = client.CoreV1Api(a)
            await core.create_namespaced_config_map(NS, {"metadata": {"name": "a"}})
            rv = (await core.list_namespaced_config_map(NS)).metadata.resource_version
            await core.create_namespaced_config_map(NS, {"metadata": {"name": "b"}})
            cluster.compact()
            url = f"{cluster.url}/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={rv}"
            async with raw_session() as s:
                async with s.get(url) as r:
                    assert r.status == 200
                    lines = (await r.read()).decode().splitlines()
                assert len(lines) == 1
                ev = json.loads(lines[0])
                assert ev["type"] == "ERROR" and ev["object"]["code"] == 410
                assert ev["object"]["reason"] == "Expired"
                assert ev["object"]["message"].startswith(f"too old resource version: {rv} (")
                w = watch.Watch()
                with pytest.raises(ApiException) as e:
                    async for _ in w.stream(core.list_namespaced_config_map, NS,
                                            resource_version=rv):
                        pass
                assert e.value.status == 410
                cluster.watch_410_mode = "http"
                async with s.get(url) as r:
                    assert r.status == 410 and (await r.json())["reason"] == "Expired"
                # a fresh list gives an RV that watches fine
                rv2 = (await core.list_namespaced_config_map(NS)).metadata.resource_version
                async with s.get(f"{url.split('&')[0]}&resourceVersion={rv2}&timeoutSeconds=1") \
                        as r:
                    assert r.status == 200 and (await r.read()) == b""
    run(main())


def test_history_limit_expires_old_rvs(tmp_path: Path) -> None:
    c = FakeCluster(root=tmp_path / "c", history_limit=3)
    c.start()
    try:
        async def main() -> None:
            async with api(c) as a:
                core = client.CoreV1Api(a)
                rv = (await core.list_namespaced_config_map(NS)).metadata.resource_version
                for i in range(5):
                    await core.create_namespaced_config_map(NS, {"metadata": {"name": f"c{i}"}})
                async with raw_session() as s:
                    url = f"{c.url}/api/v1/namespaces/default/configmaps?watch=true"
                    async with s.get(f"{url}&resourceVersion={rv}") as r:
                        assert json.loads(await r.read())["object"]["code"] == 410
        run(main())
    finally:
        c.stop()


# -- Jobs ---------------------------------------------------------------------------------------
def test_job_runs_to_complete_with_logs_and_events(cluster: FakeCluster) -> None:
    async def main() -> None:
        async with api(cluster) as a:
            batch, core = client.BatchV1Api(a), client.CoreV1Api(a)
            script = ("import os,sys; print('hello', os.environ['POD'], os.environ['GREETING']);"
                      "print('err', file=sys.stderr); print(os.getcwd())")
            body = job_body("ok", script, container={
                "env": [{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "WHO", "value": "world"},
                        {"name": "GREETING", "value": "hi-$(WHO)"}],
                "workingDir": "/work/dir"})
            job = await batch.create_namespaced_job(NS, body)
            assert job.spec.completions == 1 and job.spec.parallelism == 1
            await await_(lambda: job_condition(cluster, "ok"), 15, "job end")
            job = await batch.read_namespaced_job_status("ok", NS)
            assert job.status.succeeded == 1 and job.status.completion_time
            assert [c.type for c in job.status.conditions][-1] == "Complete"
            pods = (await core.list_namespaced_pod(NS, label_selector="job-name=ok")).items
            assert len(pods) == 1
            pod = pods[0]
            assert pod.metadata.name.startswith("ok-") and len(pod.metadata.name) == 8
            labels = pod.metadata.labels
            assert labels["batch.kubernetes.io/job-name"] == "ok" and labels["trial"] == "ok"
            assert labels["controller-uid"] == job.metadata.uid
            ref = pod.metadata.owner_references[0]
            assert (ref.kind, ref.uid, ref.controller, ref.block_owner_deletion) == \
                ("Job", job.metadata.uid, True, True)
            assert pod.status.phase == "Succeeded" and pod.spec.node_name == "fake-node"
            term = pod.status.container_statuses[0].state.terminated
            assert term.exit_code == 0 and term.reason == "Completed"
            text = await core.read_namespaced_pod_log(pod.metadata.name, NS)
            lines = text.splitlines()
            assert lines[0] == f"hello {pod.metadata.name} hi-world" and lines[1] == "err"
            assert lines[2].endswith("/work/dir")
            reasons = {e.reason for e in (await core.list_namespaced_event(NS)).items}
            assert {"Scheduled", "Pulling", "Started", "SuccessfulCreate", "Completed"} <= reasons
    run(main())


def test_failed_job_backoff_limit_and_fallback_logs(cluster: FakeCluster) -> None:
    async def main() -> None:
        async with api(cluster) as a:
            batch = client.BatchV1Api(a)
            body = job_body("bad", "import sys; print('boom'); sys.exit(3)",
                            container={"terminationMessagePolicy": "FallbackToLogsOnError"})
            await batch.create_namespaced_job(NS, body)
            cond = await await_(lambda: job_condition(cluster, "bad"), 15, "job failure")
            assert cond["type"] == "Failed" and cond["reason"] == "BackoffLimitExceeded"
            job = await batch.read_namespaced_job("bad", NS)
            assert job.status.failed == 1 and not job.status.active
            pod = pods_of(cluster, "bad")[0]
            term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
            assert term["exitCode"] == 3 and term["reason"] == "Error"
            assert term["message"] == "boom"
            assert pod["status"]["phase"] == "Failed"
    run(main())


def test_job_delete_defaults_to_orphan_background_removes_pods(cluster: FakeCluster) -> None:
    async def main() -> None:
        async with api(cluster) as a:
            batch = client.BatchV1Api(a)
            for name in ("orph", "bg"):
                await batch.create_namespaced_job(NS, job_body(name, "import time; "
                                                                     "time.sleep(60)"))
            orph, bg = running_pod(cluster, "orph"), running_pod(cluster, "bg")
            pids = cluster.pod_processes(orph["metadata"]["name"])
            bg_pids = cluster.pod_processes(bg["metadata"]["name"])
            assert pids and all(psutil.pid_exists(p) for p in pids) and bg_pids
            status = await batch.delete_namespaced_job("orph", NS)
            assert status.status == "Success"
            await asyncio.sleep(0.5)
            left = cluster.objects("pods", label_selector="job-name=orph")
            assert len(left) == 1 and left[0]["status"]["phase"] == "Running"
            assert not left[0]["metadata"].get("ownerReferences")
            assert cluster.pod_processes(orph["metadata"]["name"]) == pids
            await batch.delete_namespaced_job("bg", NS, propagation_policy="Background")
            await await_(lambda: not pods_of(cluster, "bg"), 10, "background GC")
            await await_(lambda: not any(psutil.pid_exists(p) for p in bg_pids), 10, "the GC'd pod's processes")
            assert cluster.objects("jobs") == []
            # deleting the orphan pod itself: graceful, SIGTERM ends the sleep
            core = client.CoreV1Api(a)
            pod = await core.delete_namespaced_pod(orph["metadata"]["name"], NS)
            assert pod.metadata.deletion_timestamp is not None
            await await_(lambda: not cluster.objects("pods"), 10, "pod removal")
            assert not any(psutil.pid_exists(p) for p in pids)
    run(main())
    assert cluster.requests[("delete", "jobs")] == 2


def test_foreground_delete_waits_for_pods(cluster: FakeCluster) -> None:
    async def main() -> None:
        async with api(cluster) as a:
            batch = client.BatchV1Api(a)
            script = ("import signal,time,sys\n"
                      "signal.signal(signal.SIGTERM, lambda *a: (time.sleep(0.5), sys.exit(0)))\n"
                      "time.sleep(60)")
            await batch.create_namespaced_job(NS, job_body("fg", script))
            running_pod(cluster, "fg")
            await batch.delete_namespaced_job("fg", NS, body=client.V1DeleteOptions(
                propagation_policy="Foreground"))
            job = await batch.read_namespaced_job("fg", NS)
            assert job.metadata.deletion_timestamp and "foregroundDeletion" in \
                job.metadata.finalizers
            await await_(lambda: not cluster.objects("jobs"), 10, "foreground deletion")
            assert not cluster.objects("pods")
    run(main())


def test_indexed_job_env_hostname_and_replacement(cluster: FakeCluster) -> None:
    async def main() -> None:
        async with api(cluster) as a:
            batch, core = client.BatchV1Api(a), client.CoreV1Api(a)
            await core.create_namespaced_service(NS, {"metadata": {"name": "peers"}, "spec": {
                "clusterIP": "None", "selector": {"job-name": "idx"}}})
            script = ("import os,sys; i=int(os.environ['JOB_COMPLETION_INDEX']);"
                      "print(i, os.environ['HOSTNAME']);"
                      "marker=os.path.join(os.environ['SHARED'], f'tried{i}');"
                      "first = i == 1 and not os.path.exists(marker); open(marker,'w').close();"
                      "sys.exit(1 if first else 0)")
            shared = cluster.root / "shared"
            shared.mkdir()
            body = job_body("idx", script, completionMode="Indexed", completions=3,
                            parallelism=3, backoffLimit=1,
                            container={"env": [{"name": "SHARED", "value": str(shared)}]},
                            pod_spec={"subdomain": "peers"})
            await batch.create_namespaced_job(NS, body)
            cond = await await_(lambda: job_condition(cluster, "idx"), 20, "indexed job")
            assert cond["type"] == "Complete"
            job = await batch.read_namespaced_job("idx", NS)
            assert job.status.completed_indexes == "0,1,2" and job.status.failed == 1
            pods = pods_of(cluster, "idx")
            assert len(pods) == 4
            by_index: dict[str, list[dict]] = {}
            for p in pods:
                idx = p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
                assert p["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"] == idx
                assert p["spec"]["hostname"] == f"idx-{idx}" and p["spec"]["subdomain"] == "peers"
                by_index.setdefault(idx, []).append(p)
            assert sorted(len(v) for v in by_index.values()) == [1, 1, 2]
            for idx, ps in by_index.items():
                for p in ps:
                    log = await core.read_namespaced_pod_log(p["metadata"]["name"], NS)
                    assert log == f"{idx} idx-{idx}\n"
    run(main())


def test_cluster_dns_names_pods_of_a_headless_service(cluster: FakeCluster) -> None:
    """Index 1 reaches index 0 at ``idx-0.peers`` (and the longer forms) once the Service exists; a name under no
    Service does not resolve."""
    async def main() -> None:
        async with api(cluster) as a:
            batch, core = client.BatchV1Api(a), client.CoreV1Api(a)
            await core.create_namespaced_service(NS, {"metadata": {"name": "peers"}, "spec": {
                "clusterIP": "None", "selector": {"job-name": "dns"}}})
            script = (
                "import os, socket, time\n"
                "i = int(os.environ['JOB_COMPLETION_INDEX'])\n"
                "if i == 0:\n"
                "    s = socket.socket(); s.bind(('', int(os.environ['PORT']))); s.listen()\n"
                "    for _ in range(2):\n"
                "        c, _ = s.accept(); print('served', c.recv(100).decode())\n"
                "else:\n"
                "    for name in ('dns-0.peers.default.svc.cluster.local', 'dns-0.peers'):\n"
                "        for _ in range(200):\n"
                "            try:\n"
                "                c = socket.create_connection((name, int(os.environ['PORT'])), timeout=5); break\n"
                "            except OSError:\n"
                "                time.sleep(0.05)\n"
                "        c.sendall(name.encode()); c.close()\n"
                "    try:\n"
                "        socket.getaddrinfo('dns-0.nothing', 80); print('resolved')\n"
                "    except OSError:\n"
                "        print('unknown name refused')\n")
            import socket as socket_module
            with socket_module.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            body = job_body("dns", script, completionMode="Indexed", completions=2, parallelism=2,
                            container={"env": [{"name": "PORT", "value": str(port)}]},
                            pod_spec={"subdomain": "peers"})
            await batch.create_namespaced_job(NS, body)
            cond = await await_(lambda: job_condition(cluster, "dns"), 30, "the job")
            assert cond["type"] == "Complete", cond
            logs = {}
            for p in pods_of(cluster, "dns"):
                idx = p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
                logs[idx] = await core.read_namespaced_pod_log(p["metadata"]["name"], NS)
            assert logs == {"0": "served dns-0.peers.default.svc.cluster.local\nserved dns-0.peers\n",
                            "1": "unknown name refused\n"}
    run(main())


def test_active_deadline_kills_processes(cluster: FakeCluster) -> None:
    async def main() -> None:
        async with api(cluster) as a:
            batch = client.BatchV1Api(a)
            script = "import subprocess,time; subprocess.Popen(['sleep','60']); time.sleep(60)"
            await batch.create_namespaced_job(NS, job_body("late", script,
                                                           activeDeadlineSeconds=1))
            pod = running_pod(cluster, "late")
            await await_(lambda: len(cluster.pod_processes(pod["metadata"]["name"])) == 2, 5,
                         "child process")
            pids = cluster.pod_processes(pod["metadata"]["name"])
            cond = await await_(lambda: job_condition(cluster, "late"), 10, "deadline")
            assert cond["reason"] == "DeadlineExceeded"
            assert cond["message"] == "Job was active longer than specified deadline"
            await await_(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status()
                                         != psutil.STATUS_ZOMBIE for p in pids), 10,
                         "processes gone")
    run(main())


def test_pod_failure_policy_ignores_eviction(cluster: FakeCluster) -> None:
    async def main() -> None:
        async with api(cluster) as a:
            batch = client.BatchV1Api(a)
            flag = cluster.root / "evicted-once"
            script = (f"import os,time; p={str(flag)!r}\n"
                      "if os.path.exists(p): print('second'); raise SystemExit(0)\n"
                      "open(p,'w').close(); time.sleep(60)")
            body = job_body("pfp", script, backoffLimit=0, podFailurePolicy={"rules": [
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget",
                                                          "status": "True"}]},
                {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [42]}}]})
            await batch.create_namespaced_job(NS, body)
            first = running_pod(cluster, "pfp")
            await await_(lambda: flag.exists(), 5, "marker")
            core = client.CoreV1Api(a)
            await core.create_namespaced_pod_eviction(first["metadata"]["name"], NS, {
                "apiVersion": "policy/v1", "kind": "Eviction",
                "metadata": {"name": first["metadata"]["name"], "namespace": NS}})
            cond = await await_(lambda: job_condition(cluster, "pfp"), 15, "job end")
            assert cond["type"] == "Complete"
            job = await batch.read_namespaced_job("pfp", NS)
            assert job.status.failed == 0 and job.status.succeeded == 1
            pods = {p["metadata"]["name"]: p for p in pods_of(cluster, "pfp")}
            evicted = pods[first["metadata"]["name"]]
            assert evicted["status"]["phase"] == "Failed"
            dt = [c for c in evicted["status"]["conditions"] if c["type"] == "DisruptionTarget"]
            assert dt and dt[0]["reason"] == "EvictionByEvictionAPI"
            # FailJob on exit code 42
            await batch.create_namespaced_job(NS, job_body(
                "pfp2", "raise SystemExit(42)", backoffLimit=5, podFailurePolicy={"rules": [
                    {"action": "FailJob", "onExitCodes": {"containerName": "main",
                                                          "operator": "In", "values": [42]}}]}))
            cond = await await_(lambda: job_condition(cluster, "pfp2"), 15, "FailJob")
            assert cond["reason"] == "PodFailurePolicy" and "exit code 42" in cond["message"]
    run(main())


def test_ttl_seconds_after_finished(cluster: FakeCluster) -> None:
    async def main() -> None:
        async with api(cluster) as a:
            await client.BatchV1Api(a).create_namespaced_job(
                NS, job_body("ttl", "print(1)", ttlSecondsAfterFinished=1))
            await await_(lambda: job_condition(cluster, "ttl"), 10, "completion")
            await await_(lambda: not cluster.objects("jobs") and not cluster.objects("pods"), 10,
                         "ttl deletion")
    run(main())


def test_unschedulable_until_capacity_and_missing_pvc(cluster: FakeCluster) -> None:
    async def main() -> None:
        async with api(cluster) as a:
            batch = client.BatchV1Api(a)
            body = job_body("big", "print('ran')", container={"resources": {
                "requests": {"cpu": "500m", "memory": "16Gi"}, "limits": {"nvidia.com/gpu": 1}}})
            await batch.create_namespaced_job(NS, body)
            pod = await await_(lambda: next((p for p in pods_of(cluster, "big") if any(
                c.get("reason") == "Unschedulable" for c in p["status"].get("conditions", []))),
                None), 5, "unschedulable")
            cond = pod["status"]["conditions"][0]
            assert cond["type"] == "PodScheduled" and cond["status"] == "False"
            assert cond["message"] == ("0/1 nodes are available: 1 Insufficient memory, "
                                       "1 Insufficient nvidia.com/gpu.")
            assert pod["status"]["phase"] == "Pending" and not pod["spec"].get("nodeName")
            assert any(e["reason"] == "FailedScheduling" for e in cluster.objects("events"))
            cluster.set_capacity(memory="32Gi", gpu=1)
            cond = await await_(lambda: job_condition(cluster, "big"), 10, "scheduled + done")
            assert cond["type"] == "Complete"
            # PVC: unknown claim stays pending, add_pvc lets it run with the mapped mount
            data = cluster.root / "pvc-data"
            body = job_body("vol", "import os; print(open('/data/in.txt').read())",
                            pod_spec={"volumes": [{"name": "d", "persistentVolumeClaim":
                                                   {"claimName": "claim"}}]},
                            container={"volumeMounts": [{"name": "d", "mountPath": "/data"}]})
            await batch.create_namespaced_job(NS, body)
            pod = await await_(lambda: next((p for p in pods_of(cluster, "vol") if
                                              p["status"].get("conditions")), None), 5, "pending")
            assert 'persistentvolumeclaim "claim" not found' in \
                pod["status"]["conditions"][0]["message"]
            data.mkdir()
            (data / "in.txt").write_text("from-pvc")
            cluster.add_pvc("claim", data)
            await await_(lambda: job_condition(cluster, "vol"), 10, "pvc job")
            name = pods_of(cluster, "vol")[0]["metadata"]["name"]
            log = await client.CoreV1Api(a).read_namespaced_pod_log(name, NS)
            assert log == "from-pvc\n"
    run(main())


def test_image_pull_failures(cluster: FakeCluster) -> None:
    cluster.fail_image_pulls("registry.example/*")

    async def main() -> None:
        async with api(cluster) as a:
            batch, core = client.BatchV1Api(a), client.CoreV1Api(a)
            await batch.create_namespaced_job(NS, job_body("img", "print(1)", container={
                "image": "registry.example/missing:1"}))
            reasons = set()

            def reason() -> bool:
                for p in pods_of(cluster, "img"):
                    for cs in p["status"].get("containerStatuses") or []:
                        w = cs["state"].get("waiting")
                        if w:
                            reasons.add(w["reason"])
                return {"ErrImagePull", "ImagePullBackOff"} <= reasons
            await await_(reason, 5, "pull failure reasons")
            pod = pods_of(cluster, "img")[0]
            assert pod["status"]["phase"] == "Pending"
            with pytest.raises(ApiException) as e:
                await core.read_namespaced_pod_log(pod["metadata"]["name"], NS)
            assert e.value.status == 400
            assert "is waiting to start" in error_body(e.value)["message"]
            assert any(ev["reason"] == "Failed" and ev["type"] == "Warning"
                       for ev in cluster.objects("events"))
            cluster.fail_image_pulls(None)
            await await_(lambda: job_condition(cluster, "img"), 10, "pull succeeds")
    run(main())


def test_configmap_tarball_unpacked_by_init_container(cluster: FakeCluster) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b"print('trial code says hi')\n"
        info = tarfile.TarInfo("pkg/train.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    tarball = base64.b64encode(buf.getvalue()).decode()

    async def main() -> None:
        async with api(cluster) as a:
            core, batch = client.CoreV1Api(a), client.BatchV1Api(a)
            await core.create_namespaced_config_map(NS, {"metadata": {"name": "code"},
                                                         "binaryData": {"code.tgz": tarball},
                                                         "data": {"MODE": "fast"}})
            body = job_body("tar", "", pod_spec={
                "initContainers": [{"name": "unpack", "image": "python:3.11",
                                    "command": ["python3", "-c",
                                                "import tarfile; tarfile.open('/code/code.tgz')"
                                                ".extractall('/workspace')"],
                                    "volumeMounts": [{"name": "code", "mountPath": "/code"},
                                                     {"name": "ws", "mountPath": "/workspace"}]}],
                "volumes": [{"name": "code", "configMap": {"name": "code"}},
                            {"name": "ws", "emptyDir": {}}]},
                container={"command": [PY, "/workspace/pkg/train.py"],
                           "envFrom": [{"configMapRef": {"name": "code"}}],
                           "volumeMounts": [{"name": "ws", "mountPath": "/workspace"}]})
            await batch.create_namespaced_job(NS, body)
            cond = await await_(lambda: job_condition(cluster, "tar"), 15, "job end")
            assert cond["type"] == "Complete", cond
            pod = pods_of(cluster, "tar")[0]
            init = pod["status"]["initContainerStatuses"][0]["state"]["terminated"]
            assert init["exitCode"] == 0
            log = await core.read_namespaced_pod_log(pod["metadata"]["name"], NS)
            assert log == "trial code says hi\n"
    run(main())


def test_logs_timestamps_follow_and_since_time(cluster: FakeCluster) -> None:
    async def main() -> None:
        async with api(cluster) as a:
            batch, core = client.BatchV1Api(a), client.CoreV1Api(a)
            script = ("import time\nfor i in range(6):\n print(f'line{i}', flush=True);"
                      " time.sleep(0.25)\nprint('partial', end='')")
            await batch.create_namespaced_job(NS, job_body("logs", script))
            pod = running_pod(cluster, "logs")
            name = pod["metadata"]["name"]
            resp = await core.read_namespaced_pod_log(name, NS, follow=True, timestamps=True,
                                                      _preload_content=False)
            followed = []
            while True:
                line = await resp.content.readline()
                if not line:
                    break
                followed.append(line.decode().rstrip("\n"))
            resp.release()
            texts = [x.split(" ", 1)[1] for x in followed]
            assert texts == [f"line{i}" for i in range(6)] + ["partial"]
            for x in followed:
                ts = x.split(" ", 1)[0]
                assert len(ts) == 30 and ts.endswith("Z") and ts[19] == "."
            # sinceTime filters at whole seconds: asking from line3's timestamp repeats every
            # earlier line of the same second
            ts3 = followed[3].split(" ", 1)[0]
            async with raw_session() as s:
                url = f"{cluster.url}/api/v1/namespaces/default/pods/{name}/log"
                async with s.get(url, params={"timestamps": "true", "sinceTime": ts3}) as r:
                    got = (await r.text()).splitlines()
            second = ts3[:19]
            expected = [x for x in followed if x[:19] >= second]
            assert got == expected
            assert expected[0] == followed[3] or expected[0][:19] == second
            tail = await core.read_namespaced_pod_log(name, NS, tail_lines=2)
            assert tail == "line5\npartial\n"
            limited = await core.read_namespaced_pod_log(name, NS, limit_bytes=8)
            assert limited == "line0\nli"
            with pytest.raises(ApiException) as e:
                await core.read_namespaced_pod_log("nope", NS)
            assert e.value.status == 404
    run(main())
    assert cluster.requests[("get", "pods/log")] == 5


def test_drop_streams_and_restart_api(cluster: FakeCluster) -> None:
    async def main() -> None:
        async with api(cluster) as a:
            batch, core = client.BatchV1Api(a), client.CoreV1Api(a)
            await batch.create_namespaced_job(NS, job_body("long", "import time\nfor i in "
                                                                  "range(600):\n print(i, flush="
                                                                  "True); time.sleep(0.1)"))
            pod = running_pod(cluster, "long")
            name = pod["metadata"]["name"]
            pids = cluster.pod_processes(name)
            rv = (await core.list_namespaced_pod(NS)).metadata.resource_version
            resp = await core.read_namespaced_pod_log(name, NS, follow=True,
                                                      _preload_content=False)
            await resp.content.readline()
            w = watch.Watch()
            stream = w.stream(core.list_namespaced_pod, NS, timeout_seconds=30)
            first = await stream.__anext__()
            assert first["type"] == "ADDED"
            cluster.drop_streams()
            with pytest.raises((aiohttp.ClientError, ConnectionError)):
                for _ in range(1000):
                    if not await resp.content.readline():
                        raise ConnectionError("stream ended")

            async def drain() -> None:
                with contextlib.suppress(aiohttp.ClientError, ConnectionError):
                    async for _ in stream:
                        pass
            await asyncio.wait_for(drain(), 5)       # the watch ends instead of hanging
            resp.release()
            cluster.restart_api(downtime=0.5)
            with pytest.raises(Exception):
                await core.list_namespaced_pod(NS)
            await asyncio.sleep(0.8)
            pods = await await_retry(lambda: core.list_namespaced_pod(NS))
            assert [p.metadata.name for p in pods.items] == [name]
            assert pods.items[0].status.phase == "Running"
            assert cluster.pod_processes(name) == pids
            # the old RV is gone after the restart: 410, then re-list and watch again
            with pytest.raises(ApiException) as e:
                async for _ in watch.Watch().stream(core.list_namespaced_pod, NS,
                                                    resource_version=rv):
                    pass
            assert e.value.status == 410
            new_rv = pods.metadata.resource_version
            await batch.delete_namespaced_job("long", NS, propagation_policy="Background")
            types = []
            async for ev in watch.Watch().stream(core.list_namespaced_pod, NS,
                                                 resource_version=new_rv, timeout_seconds=5):
                types.append(ev["type"])
                if ev["type"] == "DELETED":
                    break
            assert types[-1] == "DELETED" and "MODIFIED" in types
    run(main())


def test_deletecollection_grace_override_and_cluster_wide_lists(cluster: FakeCluster) -> None:
    async def main() -> None:
        async with api(cluster) as a:
            batch, core = client.BatchV1Api(a), client.CoreV1Api(a)
            stubborn = ("import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                        "time.sleep(60)")
            for name in ("c1", "c2"):
                body = job_body(name, stubborn)
                body["metadata"]["labels"]["group"] = "g"
                await batch.create_namespaced_job(NS, body)
            await batch.create_namespaced_job(NS, job_body("other", "print(1)"))
            running_pod(cluster, "c1")
            running_pod(cluster, "c2")
            assert len((await batch.list_job_for_all_namespaces()).items) == 3
            assert len((await core.list_pod_for_all_namespaces(
                label_selector="job-name in (c1,c2)")).items) == 2
            st = await batch.read_namespaced_job_status("c1", NS)
            assert st.status.active == 1
            start = time.time()
            await batch.delete_collection_namespaced_job(NS, label_selector="group=g",
                                                         propagation_policy="Background",
                                                         grace_period_seconds=1)
            assert [j["metadata"]["name"] for j in cluster.objects("jobs")] == ["other"]
            # pods ignore SIGTERM: the GC deletes them with their own 30 s grace; override it
            await await_(lambda: all(p["metadata"].get("deletionTimestamp")
                                     for p in pods_of(cluster, "c1") + pods_of(cluster, "c2")),
                         5, "GC marks pods")
            for p in pods_of(cluster, "c1") + pods_of(cluster, "c2"):
                await core.delete_namespaced_pod(p["metadata"]["name"], NS,
                                                 grace_period_seconds=1)
            await await_(lambda: not pods_of(cluster, "c1") and not pods_of(cluster, "c2"), 10,
                         "SIGKILL after the grace period")
            assert time.time() - start < 8
    run(main())
    assert cluster.requests[("deletecollection", "jobs")] == 1
    assert cluster.requests[("get", "jobs/status")] == 1


async def await_retry(fn: Callable[[], Any], timeout: float = 10) -> Any:
    deadline = time.time() + timeout
    while True:
        try:
            return await fn()
        except Exception:
            if time.time() > deadline:
                raise
            await asyncio.sleep(0.1)


def test_tls_token_and_client_certificate(tmp_path: Path) -> None:
    c = FakeCluster(root=tmp_path / "tls", tls=True)
    c.start()
    try:
        assert c.url.startswith("https://127.0.0.1:")
        cert_cfg = c.kubeconfig
        token_cfg = c.write_kubeconfig(tmp_path / "token.yaml", namespace="other",
                                       context="tok", auth="token")

        async def main() -> None:
            for path, ctx in ((cert_cfg, "fake"), (token_cfg, "tok")):
                async with api(c, path, ctx) as a:
                    cm = await client.CoreV1Api(a).create_namespaced_config_map(
                        "other", {"metadata": {"name": f"via-{ctx}"}})
                    assert cm.metadata.namespace == "other"
            cfg = client.Configuration()
            await config.load_kube_config(config_file=str(token_cfg), context="tok",
                                          client_configuration=cfg)
            cfg.api_key = {}
            async with client.ApiClient(cfg) as a:
                with pytest.raises(ApiException) as e:
                    await client.CoreV1Api(a).list_namespaced_pod(NS)
                assert e.value.status == 401
        run(main())
        assert len(c.objects("configmaps", namespace="other")) == 2
    finally:
        c.stop()


def test_memory_limit_oomkilled_and_stop_kills_everything(cluster: FakeCluster) -> None:
    async def main() -> None:
        async with api(cluster) as a:
            batch = client.BatchV1Api(a)
            hog = "x = bytearray(200 * 2**20); import time; time.sleep(30)"
            await batch.create_namespaced_job(NS, job_body("oom", hog, container={
                "resources": {"limits": {"memory": "64Mi"}}}))
            cond = await await_(lambda: job_condition(cluster, "oom"), 15, "oom")
            assert cond["reason"] == "BackoffLimitExceeded"
            term = pods_of(cluster, "oom")[0]["status"]["containerStatuses"][0]["state"][
                "terminated"]
            assert (term["reason"], term["exitCode"]) == ("OOMKilled", 137)
            await batch.create_namespaced_job(NS, job_body(
                "stay", "import signal,subprocess,time; signal.signal(signal.SIGTERM, "
                        "signal.SIG_IGN); subprocess.Popen(['sleep','60']); time.sleep(60)"))
            pod = running_pod(cluster, "stay")
            await await_(lambda: len(cluster.pod_processes(pod["metadata"]["name"])) == 2, 5,
                         "child")
    run(main())
    pids = cluster.all_pod_processes()
    assert len(pids) == 2
    cluster.stop()
    cluster.stop()
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                   for p in pids)


def test_standalone_module(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "k.yaml"
    proc = subprocess.Popen([PY, "-m", "tests.fake_k8s", "--kubeconfig", str(kubeconfig),
                             "--capacity", "cpu=2,memory=1Gi", "--root", str(tmp_path / "r")],
                            cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.PIPE,
                            text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and kubeconfig.exists()

        async def main() -> None:
            cfg = client.Configuration()
            await config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
            async with client.ApiClient(cfg) as a:
                await client.BatchV1Api(a).create_namespaced_job(NS, job_body(
                    "s", "import time; time.sleep(60)"))
                await await_retry(lambda: _running(a), 10)
        run(main())
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    time.sleep(0.2)
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)


async def _running(a: client.ApiClient) -> None:
    pods = (await client.CoreV1Api(a).list_namespaced_pod(NS)).items
    if not pods or pods[0].status.phase != "Running":
        raise AssertionError("not running yet")
