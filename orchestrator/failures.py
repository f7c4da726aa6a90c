"""What a failure means to the user: the one-line `error:` form for causes in their input or environment
(config, files, storage, tracking server, disk), a short description for the MLflow tag otherwise.

Exceptions are recognised by class name and module, not imported: the CLI classifies an error from botocore
or MLflow without importing either (a config error must stay fast)."""

from __future__ import annotations

import errno
import re

from core.errors import UserError

ANSI = re.compile(r"\x1b\[[0-9;]*m")
S3_ENVIRONMENT = {  # botocore class name -> what the user checks
    "NoCredentialsError": "no AWS credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE)",
    "PartialCredentialsError": "incomplete AWS credentials",
    "EndpointConnectionError": "cannot connect to the S3 endpoint",
    "ConnectTimeoutError": "the S3 endpoint did not accept a connection in time",
    "ReadTimeoutError": "the S3 endpoint did not answer in time",
    "ConnectionClosedError": "the S3 endpoint closed the connection",
    "InvalidEndpointURL": "invalid S3 endpoint URL (AWS_ENDPOINT_URL)",
    "ProxyConnectionError": "cannot connect to the proxy",
}
S3_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket", "AllAccessDisabled",
            "ExpiredToken", "InvalidToken", "PermanentRedirect", "AuthorizationHeaderMalformed"}
ENVIRONMENT_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                      errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
                      errno.EROFS: "read-only file system", errno.ELOOP: "too many levels of symbolic links",
                      errno.EISDIR: "is a directory", errno.ENOTDIR: "not a directory",
                      errno.ENOENT: "no such file or directory"}

# torch.save's writer on a full disk (a DeepSpeed checkpoint's shards): no errno, only its own check's text
SHORT_WRITE = re.compile(r"inline_container\.cc:\d+\] \. unexpected pos \d+ vs \d+")


def _chain(err: BaseException) -> list[BaseException]:
    """The error, the exceptions Ray wrapped (`.cause`; Ray Train's worker failures) and the explicit/implicit
    causes, outermost first."""
    out, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        out.append(err)
        suppressed = err.__suppress_context__ and err.__cause__ is None
        workers = list((getattr(err, "worker_failures", None) or {}).values())  # Ray Train: rank -> its error
        err = (getattr(err, "cause", None) or (workers[0] if workers else None) or err.__cause__
               or (None if suppressed else err.__context__))
    return out


def _is_ray_wrapper(err: BaseException) -> bool:
    return any(c.__name__ == "RayError" and c.__module__.startswith("ray.") for c in type(err).__mro__)


def _classes(err: BaseException) -> set[str]:
    return {c.__name__ for c in type(err).__mro__}


def _storage_error(err: BaseException) -> UserError | None:
    names = _classes(err)
    for name, meaning in S3_ENVIRONMENT.items():
        if name in names:
            return UserError(f"storage error: {meaning}: {err}")
    if "ClientError" in names and type(err).__module__.startswith("botocore"):
        code = getattr(err, "response", {}).get("Error", {}).get("Code", "")
        if code in S3_CODES:
            return UserError(f"storage error: {err}")
    return None


def _tracking_error(err: BaseException) -> UserError | None:
    if "MlflowException" not in _classes(err):
        return None
    text = str(err)
    if not any(s in text for s in ("Max retries exceeded", "Connection refused", "API request to", "timed out")):
        return None
    url = re.search(r"API request to (\S+) failed", text)
    patterns = (r"\[Errno -?\d+\] ([^\"')]+)", r"(timed out)", r"(Max retries)")
    reasons = (re.search(pattern, text) for pattern in patterns)
    why = next((found.group(1) for found in reasons if found), "")
    where = url.group(1).split("/api/")[0] if url else "the MLflow tracking server"
    return UserError(f"tracking error: cannot reach {where}" + (f" ({why.strip()})" if why else ""))


def _os_error(err: BaseException) -> UserError | None:
    if SHORT_WRITE.search(str(err)):
        return UserError("i/o error: a file write stopped short: no space left on device (or a disk quota) "
                         "(PyTorch's file writer)")
    if isinstance(err, OSError) and err.errno in ENVIRONMENT_ERRNOS:
        where = err.filename if err.filename is not None else "a file"
        return UserError(f"i/o error: {where}: {ENVIRONMENT_ERRNOS[err.errno]}")
    # native writers (safetensors' Rust core) report the OS error in their text only: "... (os error 28)"
    found = re.search(r"\(os error (\d+)\)", str(err))
    if found and int(found.group(1)) in ENVIRONMENT_ERRNOS and not isinstance(err, OSError):
        what = str(err).split(":")[0].strip()
        return UserError(f"i/o error: {ENVIRONMENT_ERRNOS[int(found.group(1))]} ({type(err).__name__}: {what})")
    return None


def as_user_error(err: BaseException) -> UserError | None:
    """The UserError this failure is to the user (raised as one, or a known environment cause), else None.
    Ray's wrappers are looked through (RayTaskError(ConfigError) is an instance too, but its text is the
    worker's traceback); a context suppressed by `raise ... from None` is not followed."""
    for cause in _chain(err):
        if isinstance(cause, UserError) and not _is_ray_wrapper(cause):
            return cause
        for known in (_storage_error, _tracking_error, _os_error):
            if (found := known(cause)) is not None:
                return found
    return None


def describe(err: BaseException) -> str:
    """One line for the MLflow error tag: the first error that is not Ray's wrapper (a worker's own), its type and
    first line, no colour codes."""
    inner = next((c for c in _chain(err) if not _is_ray_wrapper(c)), err)
    lines = ANSI.sub("", str(inner)).strip().splitlines()
    first = lines[0] if lines else ""
    return f"{type(inner).__name__}: {first}"[:500] if first else type(inner).__name__
