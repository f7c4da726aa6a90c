"""JSON schemas for KubeRay's custom resources, generated from the CRDs of a pinned KubeRay release.

The CRDs are vendored as released (k8s/crds/kuberay-<version>/, gzipped, their sha256 in SOURCE.json): each one's
`openAPIV3Schema` for ray.io/v1 becomes a JSON schema (draft 2020-12) with the API server's structural rules made
explicit, so `jsonschema` rejects what `kubectl apply --validate=strict` would:
- an object schema that lists `properties` accepts no other field (unless `x-kubernetes-preserve-unknown-fields`);
- `x-kubernetes-int-or-string` takes an integer or a string; `nullable` adds null;
- apiVersion and kind must be the CRD's own.
Not checked: CEL rules (`x-kubernetes-validations`, e.g. "deletionRules or onSuccess/onFailure") and list-map key
uniqueness, which the API server evaluates.

    python tools/kuberay_crds.py            # check the vendored files against SOURCE.json, list the kinds
"""

from __future__ import annotations

import gzip
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
KUBERAY_VERSION = "v1.7.0"
CRD_DIR = ROOT / "k8s" / "crds" / f"kuberay-{KUBERAY_VERSION}"
API_VERSION = "ray.io/v1"
_DROPPED = ("x-kubernetes-list-type", "x-kubernetes-list-map-keys", "x-kubernetes-map-type",
            "x-kubernetes-validations", "x-kubernetes-embedded-resource")


def _strict(node: Any) -> Any:
    """One OpenAPI v3 (structural) schema node as a strict JSON schema node, recursively."""
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _strict(value) for key, value in node.items()
           if key not in _DROPPED and key not in ("nullable", "x-kubernetes-int-or-string",
                                                  "x-kubernetes-preserve-unknown-fields")}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    preserve = node.get("x-kubernetes-preserve-unknown-fields", False)
    if "properties" in node and "additionalProperties" not in node and not preserve:
        out["additionalProperties"] = False
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def read_crd(path: Path) -> dict:
    with gzip.open(path, "rt") as fh:
        return yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def schema_of(crd: dict, version: str = "v1") -> dict:
    """The JSON schema of one CRD's served `version` (apiVersion and kind fixed to the CRD's)."""
    served = next(v for v in crd["spec"]["versions"] if v["name"] == version)
    schema = _strict(served["schema"]["openAPIV3Schema"])
    kind = crd["spec"]["names"]["kind"]
    schema["properties"]["apiVersion"] = {"const": f"{crd['spec']['group']}/{version}"}
    schema["properties"]["kind"] = {"const": kind}
    schema["required"] = sorted({*schema.get("required", ()), "apiVersion", "kind", "metadata", "spec"})
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": f"{kind} ({API_VERSION}) from KubeRay {KUBERAY_VERSION}'s CRD", **schema}


def check_source() -> dict[str, str]:
    """kind -> vendored file, after checking every file's sha256 (of the uncompressed CRD) against SOURCE.json."""
    source = json.loads((CRD_DIR / "SOURCE.json").read_text())
    kinds = {}
    for name, digest in source["sha256"].items():
        path = CRD_DIR / f"{name}.gz"
        with gzip.open(path, "rb") as fh:
            actual = hashlib.sha256(fh.read()).hexdigest()
        if actual != digest:
            raise RuntimeError(f"{path}: sha256 {actual} is not the release's {digest} (SOURCE.json)")
        kinds[source["kinds"][name]] = str(path)
    return kinds


def schemas() -> dict[str, dict]:
    """kind -> JSON schema, for every vendored CRD."""
    return {kind: schema_of(read_crd(Path(path))) for kind, path in check_source().items()}


def main() -> int:
    for kind, path in check_source().items():
        print(f"{kind}: {Path(path).relative_to(ROOT)} (KubeRay {KUBERAY_VERSION}, sha256 ok)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
