"""run.log: third-party output (warnings, logging, stderr prints, C-level writes) goes to the log, not the
terminal, unless verbose; modelpress's own messages go to both."""

import io
import logging
import os
import sys
import warnings

import pytest

from compress.core import log


def _third_party_noise():
    warnings.warn("a library UserWarning", UserWarning, stacklevel=1)
    logging.getLogger("some.library").warning("a library logging warning")
    print("Warning! No positional inputs found for a module, assuming batch size is 1.", file=sys.stderr)
    print("[torch.onnx] an exporter print on stdout")
    os.write(2, b"a C++ runtime message on fd 2\n")


NOISE = [
    "a library UserWarning",
    "a library logging warning",
    "Warning! No positional inputs found",
    "[torch.onnx] an exporter print",
    "a C++ runtime message on fd 2",
]


@pytest.mark.parametrize("verbose", [False, True])
def test_third_party_output_goes_to_run_log_and_the_terminal_only_when_verbose(tmp_path, capfd, verbose):
    (tmp_path / "run.log").write_text("an earlier line\n")
    log.set_verbosity(verbose=verbose)
    try:
        with warnings.catch_warnings(), log.run_log(tmp_path):
            warnings.simplefilter("always")
            log.info("stage 1/1: magnitude_prune")
            _third_party_noise()
    finally:
        log.set_verbosity()
    terminal = capfd.readouterr()
    text = (tmp_path / "run.log").read_text()
    assert text.startswith("an earlier line\n")  # appended, not truncated
    assert "stage 1/1: magnitude_prune" in text and "stage 1/1: magnitude_prune" in terminal.err
    for line in NOISE:
        assert line in text
        assert (line in terminal.err) is verbose
    assert terminal.out == ""  # stdout stays free for results


def test_quiet_keeps_progress_off_the_terminal_but_in_the_log(tmp_path, capfd):
    log.set_verbosity(quiet=True)
    try:
        with log.run_log(tmp_path):
            log.info("stage 1/1: distill")
            log.warn("calibration rows fewer than requested")
    finally:
        log.set_verbosity()
    err = capfd.readouterr().err
    assert "stage 1/1" not in err and "calibration rows fewer" in err
    assert "stage 1/1: distill" in (tmp_path / "run.log").read_text()


def test_collect_warnings_keeps_each_printed_warning_once_as_printed_and_nests_into_the_outer_run():
    log.warn("outside any run: not kept")
    with log.collect_warnings() as outer:
        log.warn("quantize: 8 calibration rows available, fewer than the [bold]512[/bold] requested")
        with log.collect_warnings() as inner:  # a run inside run_recipe: one collector
            log.warn("  compressed: exported with TorchScript (dynamo failed)")
            log.warn("quantize: 8 calibration rows available, fewer than the 512 requested")
            log.warn("compressed: not faster than baseline", collect=False)
        log.info("not a warning")
    assert inner is outer
    assert outer == [
        "quantize: 8 calibration rows available, fewer than the 512 requested",
        "compressed: exported with TorchScript (dynamo failed)",
    ]
    log.warn("after the run: not kept")
    assert len(outer) == 2


def test_a_library_handler_made_during_the_run_writes_to_the_earlier_stderr_afterwards(tmp_path, capfd):
    # transformers creates its StreamHandler on the sys.stderr of the moment: inside run_log that is
    # run_log's own stream, closed on the way out; a second run in the same process then printed
    # "--- Logging error ---" with a traceback.
    before = sys.stderr
    library = logging.getLogger("a.library.made.during.the.run")
    with log.run_log(tmp_path):
        handler = logging.StreamHandler(sys.stderr)
        library.addHandler(handler)
    try:
        assert handler.stream is before
        library.warning("after the run")
        assert "Logging error" not in capfd.readouterr().err
    finally:
        library.removeHandler(handler)


def test_a_library_handler_left_on_a_closed_stream_writes_to_stderr_again():
    handler = logging.StreamHandler(io.StringIO())
    logger = logging.getLogger("modelpress-test-closed-stream")
    logger.addHandler(handler)
    try:
        handler.stream.close()
        log.reopen_closed_handlers()  # what `modelpress` does first, and each test's setup
        assert handler.stream is sys.stderr
        logger.warning("written")  # no "--- Logging error ---"
    finally:
        logger.removeHandler(handler)
