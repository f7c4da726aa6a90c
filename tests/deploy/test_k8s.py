"""k8s/: the overlays render (kubectl kustomize), validate strictly, and say what the deployment needs."""

from __future__ import annotations

import copy
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import validate_k8s as vk  # noqa: E402

OVERLAYS = ("dev", "prod")
SECRET_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "MLFLOW_TRACKING_URI"}
SECRET_ENV |= {"MLFLOW_TRACKING_TOKEN"}
_rendered: dict[str, list[dict]] = {}


def rendered(overlay: str) -> list[dict]:
    if overlay not in _rendered:
        _rendered[overlay] = vk.render(vk.OVERLAYS / overlay)
    return _rendered[overlay]


def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} objects"
    return found[0]


def pod_specs(obj: dict) -> list[dict]:
    if obj["kind"] == "CronJob":
        return [obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]]
    return [template["spec"] for _, template in vk.pod_templates(obj)]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates(overlay):
    objects = rendered(overlay)
    assert sorted(o["kind"] for o in objects) == sorted(
        ["Namespace", "ServiceAccount", "ServiceAccount", "ConfigMap", "RayCluster", "RayJob", "CronJob",
         "NetworkPolicy"]
    )
    assert vk.validate_objects(objects) == []


def test_cli_passes_good_and_fails_broken_overlay(tmp_path, capsys):
    assert vk.main([]) == 0
    (tmp_path / "kustomization.yaml").write_text("resources: [cm.yaml]\nnamespace: x\n")
    (tmp_path / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndatta: {}\n")
    assert vk.main([str(tmp_path)]) == 1
    assert "'datta' was unexpected" in capsys.readouterr().out


def _set(obj: dict, path: str, value) -> dict:
    obj = copy.deepcopy(obj)
    *parents, last = path.split(".")
    node = obj
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return obj


WORKER = "spec.workerGroupSpecs.0"
CRON_CONTAINER = "spec.jobTemplate.spec.template.spec.containers.0"


@pytest.mark.parametrize(
    "kind, path, value, message",
    [
        ("RayCluster", f"{WORKER}.replicas", "two", "is not of type 'integer'"),
        ("RayCluster", f"{WORKER}.rayStartParams", {"num-gpus": 1}, "is not of type 'string'"),
        ("RayCluster", "spec.workerGroupSpec", [], "'workerGroupSpec' was unexpected"),
        ("RayCluster", "spec.headGroupSpec", KeyError, "'headGroupSpec' is a required property"),
        ("RayCluster", f"{WORKER}.template.spec.containers.0.imagePullPolicyy", "Always", "unexpected"),
        ("RayCluster", f"{WORKER}.template.spec.containers.0.resources.limits", [1], "is not of type"),
        ("RayCluster", "spec.authOptions.mode", "tokens", "is not one of"),
        ("RayCluster", "spec.autoscalerOptions.idleTimeoutSeconds", "600", "is not of type 'integer'"),
        ("RayJob", "spec.submitterConfig.backoffLimit", "0", "is not of type 'integer'"),
        ("RayJob", "spec.shutdownAfterJobFinishes", "yes", "is not of type 'boolean'"),
        ("RayJob", "spec.clusterSelectorr", {}, "'clusterSelectorr' was unexpected"),
        ("RayJob", "spec.submitterPodTemplate.spec.containers.0.securityContext.runAsUser", "1000", "type"),
        ("CronJob", "spec.concurrencyPolicyy", "Forbid", "'concurrencyPolicyy' was unexpected"),
        ("CronJob", "spec.successfulJobsHistoryLimit", "3", "is not of type"),
        ("CronJob", f"{CRON_CONTAINER}.env", [{"name": "HF_TOKEN", "value": "hf_x"}], "secretKeyRef"),
        ("NetworkPolicy", "spec.policyTypes", "Ingress", "is not of type 'array'"),
        ("ConfigMap", "data.AWS_SECRET_ACCESS_KEY", "abc", "looks secret"),
    ],
)
def test_broken_objects_fail(kind, path, value, message):
    obj = [o for o in rendered("dev") if o["kind"] == kind][0]
    errors = vk.validate_objects([_set(obj, path, value)])
    assert any(message in e for e in errors), errors


def test_shipped_secret_and_unknown_kind_fail():
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"k": "v"}}
    assert vk.validate_objects([secret])
    widget = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert vk.validate_objects([widget])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_are_non_root_read_only_and_bounded(overlay):
    for obj in rendered(overlay):
        for pod in pod_specs(obj):
            assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
            assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
            head = obj["kind"] == "RayCluster" and pod is obj["spec"]["headGroupSpec"]["template"]["spec"]
            # only the head (its autoscaler) holds a Kubernetes token
            assert pod["serviceAccountName"] == ("orchestrator-ray-head" if head else "orchestrator")
            assert pod["automountServiceAccountToken"] is head
            volumes = {v["name"]: v for v in pod["volumes"]}
            for c in pod["containers"]:
                sc, where = c["securityContext"], f"{vk.kn(obj)} {c['name']}"
                assert sc["allowPrivilegeEscalation"] is False and sc["runAsNonRoot"] is True, where
                assert sc["capabilities"]["drop"] == ["ALL"] and sc["readOnlyRootFilesystem"] is True, where
                tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
                assert tmp and "emptyDir" in volumes[tmp[0]["name"]], where
                for res in ("cpu", "memory"):
                    assert res in c["resources"]["requests"] and res in c["resources"]["limits"], where
                assert re.fullmatch(r"[\w./-]+/orchestrator:[\w.-]+", c["image"]), c["image"]
                assert not c["image"].endswith(":latest")
                assert {"configMapRef": {"name": "orchestrator-config"}} in c["envFrom"], where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_raycluster_gpu_workers_scale_from_zero_and_secret_refs(overlay):
    cluster = one(rendered(overlay), "RayCluster")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert f"ray[default,train]=={cluster['spec']['rayVersion']}" in pyproject["project"]["dependencies"]
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    (group,) = cluster["spec"]["workerGroupSpecs"]
    worker = group["template"]["spec"]["containers"][0]
    assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    for container in (head, worker):
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
        assert set(refs) >= SECRET_ENV
        assert all(e["name"] not in SECRET_ENV for e in container["env"] if "value" in e)
    assert cluster["spec"]["enableInTreeAutoscaling"] is True
    assert group["replicas"] == group["minReplicas"] == 0  # no GPU held between runs
    assert cluster["spec"]["autoscalerOptions"]["idleTimeoutSeconds"] <= 1800
    most = [one(rendered(o), "RayCluster")["spec"]["workerGroupSpecs"][0]["maxReplicas"] for o in OVERLAYS]
    assert most[0] == 1 < most[1]  # dev, prod


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_jobs_target_the_raycluster(overlay):
    objects = rendered(overlay)
    cluster = one(objects, "RayCluster")["metadata"]["name"]
    rayjob = one(objects, "RayJob")
    assert rayjob["spec"]["clusterSelector"] == {"ray.io/cluster": cluster}
    assert rayjob["spec"]["entrypoint"] == (
        "python -m orchestrator job=sft model=hf model.path=s3://bucket/base"
        " trainer.max_steps=1000 tracking.uri=http://mlflow:5000"
    )
    (cron,) = [o for o in objects if o["kind"] == "CronJob"]
    spec = cron["spec"]
    assert spec["concurrencyPolicy"] == "Forbid" and spec["timeZone"] == "Etc/UTC"
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
    job = spec["jobTemplate"]["spec"]
    pod = job["template"]["spec"]
    command = pod["containers"][0]["command"]
    submitter, entrypoint = command[: command.index("--")], command[command.index("--") + 1 :]
    flags = dict(zip(submitter[3::2], submitter[4::2], strict=True))
    assert submitter[:3] == ["python", "-m", "orchestrator.submit"]
    assert flags["--address"] == f"http://{cluster}-head-svc:8265" and flags["--prefix"] == "nightly-pipeline"
    # the submitter stops its Ray job itself, before Kubernetes' deadline and within the pod's grace period
    assert float(flags["--deadline"]) < job["activeDeadlineSeconds"]
    assert float(flags["--stop-wait"]) < pod["terminationGracePeriodSeconds"]
    # the input is found through MLflow on the cluster, not configured
    assert entrypoint[:5] == ["python", "-m", "orchestrator.latest", "--", "job=pipeline"]
    assert {"quant=mixed", "pipeline.stages=[sensitivity,quantize,evaluate]"} <= set(entrypoint)
    assert "job.storage=$(PIPELINE_STORAGE)" in entrypoint
    config = one(objects, "ConfigMap", "orchestrator-config")["data"]
    assert config["PIPELINE_STORAGE"].startswith("s3://") and "LATEST_SFT_EXPORT" not in str(objects)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_job_api_takes_only_submitters_with_the_token(overlay):
    objects = rendered(overlay)
    cluster = one(objects, "RayCluster")
    secret = cluster["spec"]["authOptions"]
    assert secret["mode"] == "token" and secret["secretName"]
    policy = one(objects, "NetworkPolicy")["spec"]
    assert policy["podSelector"] == {"matchLabels": {"ray.io/cluster": cluster["metadata"]["name"]}}
    assert policy["policyTypes"] == ["Ingress"]
    own, api = policy["ingress"]
    assert own == {"from": [{"podSelector": {"matchLabels": {"ray.io/cluster": cluster["metadata"]["name"]}}}]}
    assert api["ports"] == [{"protocol": "TCP", "port": 8265}]
    label = api["from"][0]["podSelector"]["matchLabels"]
    submitters = [one(objects, "CronJob")["spec"]["jobTemplate"]["spec"]["template"],
                  one(objects, "RayJob")["spec"]["submitterPodTemplate"]]
    for template in submitters:  # every pod that calls the job API: let through, with the cluster's token
        assert label.items() <= template["metadata"]["labels"].items()
        env = {e["name"]: e for e in template["spec"]["containers"][0]["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": secret["secretName"], "key": "auth_token"}


def test_crds_are_the_pinned_releases():
    import kuberay_crds

    kinds = kuberay_crds.check_source()  # sha256 of each vendored file = the release's
    assert set(kinds) == {"RayCluster", "RayJob"} and kuberay_crds.KUBERAY_VERSION == "v1.7.0"
    spec = vk.CRD_VALIDATORS["RayCluster"].schema["properties"]["spec"]["properties"]
    assert {"authOptions", "autoscalerOptions", "enableInTreeAutoscaling"} <= set(spec)  # the release's fields


def test_overlays_differ_where_they_should():
    dev, prod = rendered("dev"), rendered("prod")
    for objects, ns in ((dev, "llm-dev"), (prod, "llm-prod")):
        one(objects, "Namespace", ns)
        assert all(o["metadata"]["namespace"] == ns for o in objects if o["kind"] != "Namespace")
    images = {c["image"] for o in prod for pod in pod_specs(o) for c in pod["containers"]}
    assert len(images) == 1 and re.search(r":\d+\.\d+\.\d+$", images.pop())
    name = "nightly-pipeline"
    assert one(dev, "CronJob", name)["spec"].get("suspend") is True
    assert not one(prod, "CronJob", name)["spec"].get("suspend")
    assert one(dev, "CronJob", name)["spec"]["schedule"] != one(prod, "CronJob", name)["spec"]["schedule"]
