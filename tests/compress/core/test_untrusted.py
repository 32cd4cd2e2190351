"""The one way modelpress opens a file in a folder it did not create this run (issue 29): links, FIFOs,
devices and oversized files refused in one line, never followed, never blocking; names checked and
escaped."""

import os
import threading

import pytest

from compress import cli
from compress.core import log
from compress.core.errors import InputError, OutputError
from compress.core.io import read_json
from compress.core.untrusted import check_name, escape, inside, open_append, read_bytes
from compress.engine import folder

VICTIM = "line 1\nline 2\n"


@pytest.fixture
def victim(tmp_path):
    """A user's file outside the folder, and the folder under test."""
    path = tmp_path / "notes.txt"
    path.write_text(VICTIM)
    run = tmp_path / "run"
    run.mkdir()
    return path, run


def never_hangs(call, seconds: float = 20.0):
    """``call()`` in a thread: a hang guard (a FIFO opened for reading would block forever), not a speed bound."""
    outcome = {}

    def target():
        try:
            outcome["value"] = call()
        except BaseException as exc:  # noqa: BLE001  (handed back to the test)
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{call} blocked for {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@pytest.mark.parametrize("name", ["run.json", "manifest.json"])
def test_a_record_that_is_a_link_or_a_fifo_is_refused_without_blocking(victim, name):
    target, run = victim
    (run / name).symlink_to(target)
    with pytest.raises(InputError, match="is a symbolic link"):
        read_json(run / name)
    (run / name).unlink()
    os.mkfifo(run / name)
    with pytest.raises(InputError, match="is a FIFO"):
        never_hangs(lambda: read_json(run / name))


def test_a_record_over_the_bound_is_refused(tmp_path):
    (tmp_path / "run.json").write_bytes(b" " * 1001)
    with pytest.raises(InputError, match="over the 1000-byte bound"):
        read_bytes(tmp_path / "run.json", 1000, "record")
    assert read_bytes(tmp_path / "absent.json", 1000) is None


def test_the_lock_never_writes_through_a_link(victim):
    target, run = victim
    (run / folder.LOCK).symlink_to(target)
    with pytest.raises(OutputError, match="lock file is a symbolic link"):
        folder.lock(run)
    assert target.read_text() == VICTIM


WRITERS = {folder.LOCK: lambda run: folder.lock(run), folder.LOG: lambda run: open_append(run / folder.LOG)}


@pytest.mark.parametrize("name", WRITERS)
def test_a_hard_link_to_a_users_file_is_never_written(victim, name):
    target, run = victim
    os.link(target, run / name)
    with pytest.raises(OutputError, match="has another name"):
        WRITERS[name](run)
    assert target.read_text() == VICTIM


def test_the_lock_refuses_a_fifo_without_blocking(tmp_path):
    os.mkfifo(tmp_path / folder.LOCK)
    with pytest.raises(OutputError, match="lock file is a FIFO"):
        never_hangs(lambda: folder.lock(tmp_path))


def test_run_log_never_appends_through_a_link(victim):
    target, run = victim
    (run / folder.LOG).symlink_to(target)
    with pytest.raises(OutputError, match="run.log is a symbolic link"):
        with log.run_log(run):
            log.info("baseline\ntouch PWNED #")
    assert target.read_text() == VICTIM
    with pytest.raises(OutputError, match="a symbolic link"):
        open_append(run / folder.LOG)


def test_an_internal_errors_traceback_never_goes_through_a_link(victim, monkeypatch):
    target, run = victim
    (run / folder.LOG).symlink_to(target)
    monkeypatch.setattr("compress.core.io.active_folder", lambda: run)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        saved = cli._save_traceback()
    assert saved != run / folder.LOG and target.read_text() == VICTIM
    saved.unlink()


def test_names_are_plain_and_printed_escaped(tmp_path):
    assert check_name("compressed-int8_dynamic", "artifact name", tmp_path) == "compressed-int8_dynamic"
    for name in ["baseline\ntouch PWNED #", "\x1b[31mFAKE", "a/b", ".hidden", "x" * 129, 7, ""]:
        with pytest.raises(InputError, match="is not a plain name") as caught:
            check_name(name, "artifact name", tmp_path)
        assert "\x1b" not in str(caught.value) and "\n" not in str(caught.value)
    assert escape("\x1b[31mFAKE: all passed\n\u202e") == "\\x1b[31mFAKE: all passed\\n\\u202e"


@pytest.mark.parametrize("relative", ["/etc/passwd", "../x", "a/../../x", "", 5])
def test_a_path_leaving_the_folder_is_refused(tmp_path, relative):
    with pytest.raises(InputError, match="leaves the folder"):
        inside(tmp_path, relative, "point path")


def test_a_link_inside_the_folder_leading_out_is_refused(victim):
    target, run = victim
    (run / "trials").symlink_to(target.parent)
    with pytest.raises(InputError, match="leaves the folder"):
        inside(run, "trials/notes.txt", "point path")


def test_the_cli_escapes_what_an_error_quotes(tmp_path, capsys, monkeypatch):
    def hostile(args):
        raise InputError("artifact \x1b[31mFAKE: all passed")

    monkeypatch.setitem(cli.COMMANDS, "passes", (hostile, "x"))
    assert cli.main(["passes"]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\\x1b[31mFAKE" in err and len(err.strip().splitlines()) == 1
