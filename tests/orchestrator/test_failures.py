"""orchestrator/failures.py: which failures are the user's (one `error:` line, exit 2) and what the MLflow tag says."""

from __future__ import annotations

import errno

import pytest

from core.errors import ConfigError, NumericError
from orchestrator.failures import as_user_error, describe


def _botocore_errors() -> list[tuple[Exception, str]]:
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, ReadTimeoutError

    denied = ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "GetObject")
    return [
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1/b"), "cannot connect to the S3 endpoint"),
        (NoCredentialsError(), "no AWS credentials"),
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:9/b/k"), "did not answer in time"),
        (denied, "AccessDenied"),
    ]


@pytest.mark.parametrize("index", range(4))
def test_storage_environment_failures_are_one_line(index: int) -> None:
    err, expected = _botocore_errors()[index]
    user = as_user_error(err)
    assert user is not None and str(user).startswith("storage error: ") and expected in str(user)


def test_a_server_side_s3_error_that_is_not_the_users_stays_a_traceback() -> None:
    from botocore.exceptions import ClientError

    assert as_user_error(ClientError({"Error": {"Code": "InternalError"}}, "PutObject")) is None


def test_unreachable_tracking_server_names_the_address_not_the_retry_dump() -> None:
    from mlflow.exceptions import MlflowException

    text = ("API request to http://u:p@127.0.0.1:1/api/2.0/mlflow/experiments/get-by-name failed with exception "
            "HTTPConnectionPool(host='127.0.0.1', port=1): Max retries exceeded with url: /api/2.0/mlflow (Caused by "
            "NewConnectionError(\"HTTPConnection(host='127.0.0.1', port=1): Failed to establish a new connection: "
            "[Errno 111] Connection refused\"))")
    user = as_user_error(MlflowException(text))
    assert str(user) == "tracking error: cannot reach http://u:p@127.0.0.1:1 (Connection refused)"


@pytest.mark.parametrize(("code", "meaning"), [(errno.ENOSPC, "no space left on device"),
                                               (errno.EACCES, "permission denied"),
                                               (errno.ELOOP, "too many levels of symbolic links")])
def test_environment_os_errors_name_the_file(code: int, meaning: str) -> None:
    user = as_user_error(OSError(code, "x", "/data/ckpt/model.pt"))
    assert str(user) == f"i/o error: /data/ckpt/model.pt: {meaning}"


def test_causes_are_followed_through_ray_wrappers_and_ray_train_worker_failures() -> None:
    from ray.exceptions import RayTaskError
    from ray.train.v2.api.exceptions import WorkerGroupError

    inner = OSError(errno.ENOSPC, "No space left on device", "/runs/j/checkpoints/x.pt")
    wrapped = RayTaskError("train", "Traceback ...\n\x1b[31mOSError\x1b[0m", inner)
    assert "no space left on device" in str(as_user_error(wrapped))
    config = ConfigError("trainer.checkpoint.resume", "unreadable")
    assert as_user_error(WorkerGroupError("worker 1 failed", {1: config})) is config
    numeric = NumericError("step 3", "the loss is nan")
    assert as_user_error(RuntimeError("outer")) is None
    try:
        raise RuntimeError("while handling") from numeric
    except RuntimeError as err:
        assert as_user_error(err) is numeric


def test_describe_is_one_clean_line_of_the_workers_own_error() -> None:
    from ray.exceptions import RayTaskError

    wrapped = RayTaskError("evaluate", "\x1b[36mray::evaluate()\x1b[39m\nTraceback", ValueError("bad shape\nmore"))
    assert describe(wrapped) == "ValueError: bad shape"
    assert describe(KeyError()) == "KeyError"


def test_native_writers_os_errors_are_recognised_by_their_text() -> None:
    from safetensors import SafetensorError

    err = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert str(as_user_error(err)) == "i/o error: no space left on device (SafetensorError: Error while serializing)"


def test_torch_saves_short_write_text_is_an_io_error() -> None:
    """The text torch.save's writer raised on a full 256 KiB tmpfs here (the next test makes it for real where
    mounts are allowed)."""
    user = as_user_error(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"))
    assert str(user).startswith("i/o error: a file write stopped short: no space left on device")


def test_torch_save_on_a_full_disk_is_an_io_error(tmp_path) -> None:
    """A DeepSpeed checkpoint is torch.save: on a full disk its writer raises a RuntimeError with no errno, only
    its check's text. Seen on a real full disk here (a 256 KiB tmpfs) where mounts are allowed; the save runs in a
    child process, which closes the half-written file when it exits (else the mount stays busy)."""
    import subprocess
    import sys

    disk = tmp_path / "small"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here: needs root in a container that allows mounts")
    save = f"import torch; torch.save({{'w': torch.zeros(200_000)}}, {str(disk / 'shard.pt')!r})"
    try:
        child = subprocess.run([sys.executable, "-c", save], capture_output=True, text=True, timeout=120)
    finally:
        subprocess.run(["umount", str(disk)], check=True)
    assert child.returncode != 0, "the save fitted: the disk was not full"
    message = child.stderr.strip().splitlines()[-1].removeprefix("RuntimeError: ")
    user = as_user_error(RuntimeError(message))
    assert user is not None and str(user).startswith("i/o error: a file write stopped short: no space left"), message
    assert as_user_error(RuntimeError("unexpected pos 3 vs 4")) is None  # the text alone, elsewhere: not ours
