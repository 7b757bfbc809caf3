"""deploy/kubernetes: every kustomization renders offline and every manifest fits its schema; the workers, their
probes, volumes and grace periods are what the service needs; each KEDA ScaledObject watches the Redis list that
really grows while its queue's jobs wait (a real redis-server, the API's enqueue, no worker consuming)."""

from __future__ import annotations

import json
import re
from urllib.parse import urlsplit

import pytest

from common.settings import Settings
from scripts.processes import free_port, start_redis, stop_group
from tests.service import kube

SETTINGS = Settings(_env_file=None)
QUEUES = {SETTINGS.train_queue: 0, SETTINGS.generate_queue: 1}  # queue: minReplicaCount
# A training step's worst time the grace period must cover STILLMOVING_TRAIN_CHECKPOINT_EVERY of: sd15 at
# 512x512x16 frames is about 55 TFLOP a step (bench/results/real_size.json: 6.9 TFLOP at 2 frames), some 7 s on
# a T4-class GPU.
WORST_TRAIN_STEP_S = 10


@pytest.fixture(scope="module", params=kube.kustomizations(), ids=lambda p: p.relative_to(kube.KUBERNETES).as_posix())
def rendered(request) -> list[dict]:
    return kube.render(request.param)


@pytest.fixture(scope="module")
def in_cluster() -> list[dict]:
    return kube.render(kube.KUBERNETES / "overlays" / "in-cluster")


def test_every_manifest_fits_its_schema(rendered):
    for doc in rendered:
        kube.validate(doc)
    kinds = {d["kind"] for d in rendered}
    assert {"Deployment", "Service", "PersistentVolumeClaim", "ScaledObject", "ConfigMap", "Secret"} <= kinds


def test_the_validators_refuse_what_a_cluster_would_refuse_or_drop(rendered):
    import copy

    import jsonschema

    deployment = copy.deepcopy(kube.one(rendered, "Deployment", "api"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}  # a typo a server would prune
    scaled = copy.deepcopy(kube.find(rendered, "ScaledObject")[0])
    scaled["spec"]["triggers"][0]["metadata"]["listLength"] = 1  # KEDA's metadata is strings only
    typo = copy.deepcopy(kube.find(rendered, "ScaledObject")[0])
    typo["spec"]["minReplicas"] = 0
    for bad in (deployment, scaled, typo):
        with pytest.raises(jsonschema.ValidationError):
            kube.validate(bad)


def test_one_gpu_worker_deployment_per_queue_with_probes_volumes_and_grace(rendered):
    workers = {kube.worker_queue(d): d for d in kube.find(rendered, "Deployment") if d["metadata"]["name"] != "api"}
    assert set(workers) == set(QUEUES)
    claims = {d["metadata"]["name"] for d in kube.find(rendered, "PersistentVolumeClaim")}
    for deployment in workers.values():
        pod = deployment["spec"]["template"]["spec"]
        worker = kube.container(deployment)
        command = kube.expanded_command(worker)
        assert command[:4] == ["celery", "-A", "worker.celery_app", "worker"] and command[command.index("-c") + 1] == "1"
        assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in worker["volumeMounts"]}
        cache = mounts["/cache/huggingface"]["persistentVolumeClaim"]["claimName"]  # the image's HF_HOME
        assert cache in claims
        assert "emptyDir" in mounts["/cache/worker"]  # the image's STILLMOVING_WORKDIR: each pod its own
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            ping = worker[probe]["exec"]["command"]
            assert ping[:2] == ["sh", "-c"] and "inspect ping" in ping[2] and '-d "celery@$HOSTNAME"' in ping[2]
        env = {e["name"]: e.get("value") for e in worker["env"]}
        grace_s = float(env["STILLMOVING_SHUTDOWN_GRACE_S"])  # the worker's own: finish or give back within it
        assert SETTINGS.shutdown_reserve_s < grace_s <= pod["terminationGracePeriodSeconds"] - 30, grace_s
        liveness = worker["livenessProbe"]
        assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 300  # rides out a Redis restart
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ports = {p["name"]: p["containerPort"] for p in worker["ports"]}  # served on all addresses by the image
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert ports["metrics"] == SETTINGS.worker_metrics_port == int(annotations["prometheus.io/port"])
        assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
    grace = workers[SETTINGS.train_queue]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > SETTINGS.train_checkpoint_every * WORST_TRAIN_STEP_S
    selectors = [frozenset(d["spec"]["selector"]["matchLabels"].items()) for d in workers.values()]
    assert len(set(selectors)) == len(selectors), "the two worker Deployments must not select each other's pods"


def test_scaled_objects_scale_each_worker_on_its_own_queue(rendered):
    from common.jobstore import JobStore

    deployments = {d["metadata"]["name"]: d for d in kube.find(rendered, "Deployment")}
    config = kube.one(rendered, "ConfigMap", "stillmoving-config")["data"]
    broker = urlsplit(config["STILLMOVING_REDIS_URL"])
    scaled = kube.find(rendered, "ScaledObject")
    assert len(scaled) == len(QUEUES)
    for obj in scaled:
        target = deployments[obj["spec"]["scaleTargetRef"]["name"]]
        queue = kube.worker_queue(target)
        assert obj["spec"]["minReplicaCount"] == QUEUES[queue], queue
        assert obj["spec"]["maxReplicaCount"] >= 1 and obj["metadata"]["namespace"] == target["metadata"]["namespace"]
        triggers = {t["name"]: t for t in obj["spec"]["triggers"]}
        assert {t["type"] for t in triggers.values()} == {"redis"}
        assert triggers["waiting"]["metadata"]["listName"] == queue
        assert triggers["running"]["metadata"]["listName"] == JobStore.running_key(queue)
        modifiers = obj["spec"]["advanced"]["scalingModifiers"]
        assert modifiers["formula"] == "waiting + running" and modifiers["target"] == "1"  # a replica a job
        for trigger in triggers.values():
            host, port = trigger["metadata"]["address"].rsplit(":", 1)
            # the operator runs in KEDA's namespace: the broker's Service by its full name in the app's namespace
            assert host == f"{broker.hostname}.{target['metadata']['namespace']}.svc.cluster.local"
            assert int(port) == (broker.port or 6379) and trigger["metadata"]["databaseIndex"] == broker.path[1:]


def test_services_select_pods_and_references_resolve(rendered):
    templates = [d["spec"]["template"] for d in rendered if d["kind"] in ("Deployment", "StatefulSet")]
    for service in kube.find(rendered, "Service"):
        selector = service["spec"]["selector"].items()
        pods = [t for t in templates if selector <= t["metadata"]["labels"].items()]
        assert len(pods) == 1, service["metadata"]["name"]
        ports = {p["name"] for c in pods[0]["spec"]["containers"] for p in c["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
    names = {(d["kind"], d["metadata"]["name"]) for d in rendered}
    text = json.dumps(templates)
    for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef"), ("Secret", "secretKeyRef"),
                      ("PersistentVolumeClaim", "persistentVolumeClaim")):
        for ref in re.findall(rf'"{key}": \{{[^}}]*"(?:name|claimName)": "([^"]+)"', text):
            assert (kind, ref) in names, f"{key} {ref!r} names nothing in the render"


def test_config_names_only_real_settings(rendered):
    fields = {f"STILLMOVING_{name.upper()}" for name in Settings.model_fields}
    for doc in kube.find(rendered, "ConfigMap") + kube.find(rendered, "Secret"):
        keys = set(doc.get("data", {})) | set(doc.get("stringData", {}))
        assert keys <= fields, keys - fields
    api = kube.container(kube.one(rendered, "Deployment", "api"))
    from api.app import create_app

    paths = set(create_app(SETTINGS).openapi()["paths"])
    assert {api["readinessProbe"]["httpGet"]["path"], api["livenessProbe"]["httpGet"]["path"]} <= paths


def test_in_cluster_redis_persists_and_minio_is_the_store(in_cluster):
    redis = kube.container(kube.one(in_cluster, "StatefulSet", "redis"))
    args = redis["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    data = args[args.index("--dir") + 1]
    assert any(m["mountPath"] == data for m in redis["volumeMounts"])
    assert kube.one(in_cluster, "StatefulSet", "redis")["spec"]["volumeClaimTemplates"]
    config = kube.one(in_cluster, "ConfigMap", "stillmoving-config")["data"]
    assert urlsplit(config["STILLMOVING_S3_ENDPOINT_URL"]).hostname == "minio"
    assert urlsplit(config["STILLMOVING_REDIS_URL"]).hostname == "redis"
    for service in ("minio", "redis"):
        kube.one(in_cluster, "Service", service)


@pytest.fixture()
def idle_broker(tmp_path):
    """A redis-server of this test alone: nothing consumes its queues."""
    port = free_port()
    proc = start_redis(port, tmp_path)
    yield f"redis://127.0.0.1:{port}/0"
    stop_group(proc)


def test_the_keys_each_scaled_object_watches_are_the_ones_that_grow(in_cluster, idle_broker):
    """kombu's Redis transport LPUSHes a message to the key named as its queue (a priority would add a suffix:
    the project sends none). Jobs enqueued as the API does, with no worker: the waiting list grows, one a job; a
    job a worker takes moves to the running set, and leaves it when it ends or is given back."""
    import redis

    from api.enqueue import enqueue, new_id
    from common.celery_config import TASK_FOR_KIND, make_celery
    from common.jobstore import JobStore, now
    from common.schemas import JobRecord

    settings = Settings(redis_url=idle_broker, _env_file=None)
    store, celery, r = JobStore.from_settings(settings), make_celery(settings), redis.Redis.from_url(idle_broker)
    watched = {}
    for obj in kube.find(in_cluster, "ScaledObject"):
        queue = kube.worker_queue(kube.one(in_cluster, "Deployment", obj["spec"]["scaleTargetRef"]["name"]))
        watched[queue] = {t["name"]: t["metadata"]["listName"] for t in obj["spec"]["triggers"]}
    for kind, count in (("customize", 2), ("generate", 3)):
        keys = watched[settings.queue_for(kind)]
        jobs = [JobRecord(id=new_id("job"), kind=kind, owner="tenant", created_at=now()) for _ in range(count)]
        for job in jobs:
            enqueue(store, celery, settings, job)
        assert r.llen(keys["waiting"]) == count and r.zcard(keys["running"]) == 0
        assert json.loads(r.lindex(keys["waiting"], 0))["headers"]["task"] == TASK_FOR_KIND[kind]
        assert store.transition(jobs[0].id, ["queued"], attempt=0, status="running", attempts=1, started_at=now())
        assert r.type(keys["running"]) == b"zset" and r.zcard(keys["running"]) == 1  # KEDA counts a zset by ZCARD
        assert store.transition(jobs[1].id, ["queued"], attempt=0, status="running", attempts=1, started_at=now())
        assert r.zcard(keys["running"]) == 2
        assert store.finish(jobs[0].id, "succeeded", attempt=1) and store.requeue(jobs[1].id, attempt=1)
        assert r.zcard(keys["running"]) == 0  # ended or given back: no longer a busy worker
    lists = {key.decode() for key in r.scan_iter() if r.type(key) == b"list"}
    assert lists == {keys["waiting"] for keys in watched.values()} == set(QUEUES)  # no priority-suffixed list
    celery.close()
