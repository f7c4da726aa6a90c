"""core/errors.py: user errors keep their one line wherever they are raised (a Ray worker pickles them)."""

from __future__ import annotations

import pickle

from core.errors import ConfigError, DataError


def test_user_errors_survive_pickling() -> None:
    for err in (ConfigError("calib.path", "no such file"), DataError("a.jsonl", 3, "no messages")):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err) and vars(back) == vars(err)
