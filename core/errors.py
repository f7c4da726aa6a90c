"""Errors that reach the user as one clear line."""


class UserError(Exception):
    """Bad input (config, data, paths): printed as one line, exit code 2, run FAILED."""

    exit_code = 2


class ConfigError(UserError):
    """A config field is unknown, mistyped, missing or out of range."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"config error: {field}: {message}")
        self.field, self.message = field, message

    def __reduce__(self) -> tuple:  # rebuilt from its fields: a Ray worker's error reaches the driver as itself
        return type(self), (self.field, self.message)


class DataError(UserError):
    """A dataset record is malformed; the message names file:line."""

    def __init__(self, path: str, line: int | None, message: str) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"data error: {where}: {message}")
        self.path, self.line, self.message = path, line, message

    def __reduce__(self) -> tuple:
        return type(self), (self.path, self.line, self.message)


class NumericError(UserError):
    """NaN or Inf where a number must be finite (a weight, a block's statistics or output, a loss): the job stops
    instead of passing it on; the message names the tensor, block or step."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"numeric error: {where}: {message}")
        self.where, self.message = where, message

    def __reduce__(self) -> tuple:
        return type(self), (self.where, self.message)


def portable(err: BaseException) -> BaseException:
    """`err` if it survives a pickle round trip (how a Ray worker's error travels to the driver), else a
    RuntimeError with its type and text. An error that holds something unpicklable (torch.compile attaches its
    graphs to errors raised inside compiled code) otherwise reaches the driver as Ray's serialization failure, and
    its own message is lost."""
    import pickle

    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:  # noqa: BLE001 (whatever stops pickling: the replacement carries the text)
        return RuntimeError(f"{type(err).__name__}: {err}")
