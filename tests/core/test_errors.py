"""core/errors.py: user errors keep their one line wherever they are raised (a Ray worker pickles them)."""

from __future__ import annotations

import pickle
import threading

from core.errors import ConfigError, DataError, portable


def test_user_errors_survive_pickling() -> None:
    for err in (ConfigError("calib.path", "no such file"), DataError("a.jsonl", 3, "no messages")):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err) and vars(back) == vars(err)


def test_an_error_that_cannot_pickle_travels_as_its_text() -> None:
    kept = [ConfigError("trainer.x", "bad"), ValueError("plain")]
    assert all(portable(err) is err for err in kept)
    err = RuntimeError("Expected self.size(1) to be divisible by 16")
    err.graph = threading.Lock()  # as torch.compile's graphs ride on errors raised in compiled code
    replacement = portable(err)
    assert type(replacement) is RuntimeError and str(replacement) == f"RuntimeError: {err}"
    assert str(pickle.loads(pickle.dumps(replacement))) == str(replacement)
    assert pickle.dumps(NeedsTwo("x", "y")) and str(portable(NeedsTwo("x", "y"))) == "NeedsTwo: x y"


class NeedsTwo(Exception):
    """Pickles, but cannot be rebuilt from its args (the formatted text): the driver could not load it."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a} {b}")
