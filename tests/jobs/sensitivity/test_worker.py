"""The scoring worker's progress lines (jobs/sensitivity/worker.py `reported`): one per batch, once it is scored."""

from __future__ import annotations

from jobs.sensitivity.worker import reported


def test_a_line_once_each_batch_is_done(capsys) -> None:
    seen = []
    for batch in reported(iter("abc"), 3):
        seen.append((batch, capsys.readouterr().out))  # what was printed before this batch was handed out
    assert seen == [("a", ""), ("b", "scored 1/3 batches\n"), ("c", "scored 2/3 batches\n")]
    assert capsys.readouterr().out == "scored 3/3 batches\n"
