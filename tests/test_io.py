"""Outputs that cannot destroy inputs or each other: the input/output rule, the writer's lock,
permissions that follow the umask, cleanup of killed runs, and results kept on a late write failure."""

from __future__ import annotations

import multiprocessing as mp
import os
import stat

import pytest

from eavss.errors import EavssError
from eavss.io import (
    atomic_dir,
    check_not_inside,
    check_out_dir,
    lock_out_dir,
    unlock_out_dir,
    write_json_atomic,
)


def test_out_may_not_be_contain_or_lie_inside_an_input(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    for out in (model, tmp_path):
        with pytest.raises(EavssError, match="is or contains the input"):
            check_not_inside(out, model)
    with pytest.raises(EavssError, match="lies inside the input"):
        check_not_inside(model / "sub", model)
    run = tmp_path / "run"
    run.mkdir()
    check_not_inside(run / "pruned", model, may_hold_out=(run,))  # a results folder may hold the output
    with pytest.raises(EavssError, match="is or contains the input"):
        check_not_inside(run, model, may_hold_out=(run,))
    check_not_inside(tmp_path / "other", model, None, tmp_path / "missing")


def _hold_lock(out, ready, release):
    lock_out_dir(out)
    ready.set()
    release.wait(30)


def test_a_second_writer_of_the_same_out_is_refused(tmp_path):
    out = tmp_path / "o"
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold_lock, args=(str(out), ready, release))
    p.start()
    try:
        assert ready.wait(60)
        with pytest.raises(EavssError, match=r"another eavss run \(pid \d+\) is writing"):
            lock_out_dir(out)
    finally:
        release.set()
        p.join(30)
    lock_out_dir(out)  # the lock went with the process
    lock_out_dir(out)  # re-entrant
    unlock_out_dir(out)
    assert not (tmp_path / ".o.lock").exists()


def test_outputs_follow_the_umask_and_stale_partials_are_cleaned(tmp_path):
    stale = tmp_path / ".o.abc123.partial"
    stale.mkdir()
    (stale / "half.json").write_text("{")
    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "o") as tmp:
            write_json_atomic(tmp / "r.json", {"a": 1})
    finally:
        os.umask(old)
    assert not stale.exists()
    assert stat.S_IMODE((tmp_path / "o").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "o" / "r.json").stat().st_mode) == 0o644


def test_a_late_write_failure_keeps_the_results_and_says_where(tmp_path):
    import errno

    with pytest.raises(EavssError) as e:
        with atomic_dir(tmp_path / "o") as tmp:
            write_json_atomic(tmp / "report.json", {"a": 1})
            raise OSError(errno.ENOSPC, "No space left on device")
    msg = str(e.value)
    assert "could not write" in msg and "No space left" in msg and "kept in" in msg and "\n" not in msg
    kept = msg.rsplit("kept in ", 1)[1]
    assert (os.path.join(kept, "report.json")) and os.path.isfile(os.path.join(kept, "report.json"))
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.*.partial"))


def test_json_with_inline_scalar_lists_is_the_same_value(tmp_path):
    import json

    import numpy as np

    obj = {"a": [1, 2.5, None, True, "x"], "b": {"c": [[1, 2], []], "d": {}}, "e": [{"f": np.arange(3)}]}
    write_json_atomic(tmp_path / "r.json", obj, inline_scalar_lists=True)
    text = (tmp_path / "r.json").read_text()
    assert '"a": [1, 2.5, null, true, "x"]' in text and '"f": [0, 1, 2]' in text  # one line each
    assert json.loads(text) == {**obj, "e": [{"f": [0, 1, 2]}]}
    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "n.json", {"a": [float("nan")]}, inline_scalar_lists=True)


def test_an_out_path_that_is_not_utf8_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    """A Linux file name may hold any bytes; Python surrogate-escapes those that are not UTF-8
    (b"\\xff" -> "\\udcff"). The tokenizer writer cannot take such a path, so `eavss prune --out
    $'runs/\\xff'` crashed with a traceback when it wrote its outputs. It is refused at the start,
    naming the byte as the user typed it."""
    from eavss.cli import main
    from eavss.models import loading

    base = tmp_path.resolve()
    bad = base / os.fsdecode(b"run\xff")
    expected = (f"--out {base}/run\\xff is not a UTF-8 path (the model and tokenizer writers need UTF-8 file names); "
                "choose an output folder whose path is UTF-8")
    with pytest.raises(EavssError) as e:
        check_out_dir(bad, overwrite=False)
    assert str(e.value) == expected
    with pytest.raises(EavssError, match="is not a UTF-8 path"):  # a parent that is not UTF-8 counts as well
        check_out_dir(bad / "sub", overwrite=True)

    def no_loading(*a, **k):
        raise AssertionError("the model was loaded before the --out check")

    monkeypatch.setattr(loading, "load_model", no_loading)
    assert main(["score", "--out", str(bad), "--threads", "1", "--no-progress"]) == 2
    assert capsys.readouterr().err == f"eavss: error: {expected}\n"
    assert list(tmp_path.iterdir()) == []  # nothing written, no lock left behind


def test_an_out_folder_that_cannot_be_written_is_one_line(tmp_path, capsys):
    """/proc/x: os.access says yes to root, the lock file cannot be created there."""
    import pytest

    from eavss.cli import main
    from eavss.errors import EavssError

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(EavssError, match=r"cannot write the output folder .*file/out .*choose a writable --out"):
        lock_out_dir(blocker / "out")
    rc = main(["score", "--out", "/proc/x", "--threads", "1", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "/proc/x" in err and "writable" in err
