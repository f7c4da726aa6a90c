"""Placement checks (core/cluster.py) on a real embedded Ray cluster of 2 CPUs and no GPU; the worker environment
also through a driver attached to the session's `ray start` head."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from core.cluster import ClusterConfig, check_fits, connect
from core.errors import ConfigError
from tests.conftest import REPO


@pytest.fixture(scope="module")
def two_cpus():
    with connect(ClusterConfig(num_cpus=2, num_gpus=0, include_dashboard=False,
                               tmp_dir=f"/tmp/orch-fits-{os.getpid()}")) as mode:
        yield mode


def test_what_fits_passes(two_cpus: str) -> None:
    assert two_cpus == "embedded"
    check_fits("quant", 2, 1, 0)
    check_fits("search", 1, 2, 0)


@pytest.mark.parametrize(("args", "field"), [
    (("quant", 1, 4, 0), "quant.cpus_per_worker"),  # no node can host one worker
    (("quant", 3, 1, 0), "quant.num_workers"),  # one fits, three do not at once
    (("trainer", 1, 1, 1, "gpus_per_worker"), "trainer.gpus_per_worker"),  # no GPU anywhere
])
def test_what_cannot_be_placed_names_its_field(two_cpus: str, args: tuple, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        check_fits(*args)
    assert err.value.field == field
    assert "do not fit the cluster's nodes (2 CPU + 0 GPU); Ray would wait for them forever" in str(err.value)


def test_embedded_workers_get_expandable_segments_unless_the_user_chose(two_cpus: str,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from core.cluster import _embedded_env

    expected = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    seen = ray.get(ray.remote(lambda: os.environ.get("PYTORCH_CUDA_ALLOC_CONF")).remote())
    assert seen == expected  # what a real worker process of the embedded cluster sees
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "backend:cudaMallocAsync")
    assert _embedded_env()["PYTORCH_CUDA_ALLOC_CONF"] == "backend:cudaMallocAsync"


def test_workers_of_an_attached_cluster_get_the_drivers_quant_backend(ray_head) -> None:
    """They inherit the environment of `ray start`, not the driver's: the knob travels in the job's runtime_env."""
    code = ("import os, ray\nfrom core.cluster import ClusterConfig, connect\n"
            f"with connect(ClusterConfig(address={ray_head.address!r})):\n"
            "    print('worker sees', ray.get(ray.remote(lambda: os.environ.get('QUANT_BACKEND')).remote()))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, **ray_head.env, "QUANT_BACKEND": "torch"})
    assert "worker sees torch" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]


def test_a_user_error_in_an_actor_constructor_reaches_the_driver_as_itself(two_cpus: str) -> None:
    import ray

    from core.cluster import remote_actor
    from orchestrator.failures import as_user_error

    class Loader:  # defined here: Ray ships it by value (workers cannot import test modules)
        """An actor whose constructor finds bad input, as a worker whose node cannot read the model path."""

        def __init__(self, path: str) -> None:
            if path.startswith("s3://missing"):
                raise ConfigError("model.path", f"{path}: not found")
            self.path = path

        def load(self) -> str:
            return self.path

    actor = remote_actor(Loader, num_cpus=1)
    assert ray.get(actor.remote("/models/x").load.remote()) == "/models/x"
    with pytest.raises(Exception) as err:  # noqa: PT011  Ray's wrapper type; what it carries is checked below
        ray.get(actor.remote("s3://missing/x").load.remote())
    user = as_user_error(err.value)
    assert type(user) is ConfigError and user.field == "model.path"
    assert str(user) == "config error: model.path: s3://missing/x: not found"  # its one line, not a traceback



def test_an_actor_named_by_import_path_is_built_in_the_worker_only(two_cpus: str) -> None:
    import sys

    import ray

    from core.cluster import remote_actor

    loaded = sys.modules.pop("xml.dom.minidom", None)  # whatever imported it before: gone from this process now
    try:
        actor = remote_actor("xml.dom.minidom:Document", ("toxml",), num_cpus=1)
        assert ray.get(actor.remote().toxml.remote()) == '<?xml version="1.0" ?>'  # built and called in the worker
        assert "xml.dom.minidom" not in sys.modules  # never imported by the driver
    finally:
        if loaded is not None:
            sys.modules["xml.dom.minidom"] = loaded
    missing = remote_actor("no_such_module_here:Worker", ("work",), num_cpus=1)
    with pytest.raises(Exception, match="no_such_module_here"):  # noqa: PT011  Ray's wrapper type
        ray.get(missing.remote().work.remote())  # the constructor's error, raised by the first call
    with pytest.raises(TypeError, match="list the actor's methods"):
        remote_actor("xml.dom.minidom:Document", num_cpus=1)
