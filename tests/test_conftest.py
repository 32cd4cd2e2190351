"""The shared fixtures: a library log handler left on a closed capture stream is re-pointed at stderr."""

import io
import logging
import sys

from tests.conftest import reopen_log_streams


def test_a_handler_on_a_closed_stream_writes_to_stderr_again():
    handler = logging.StreamHandler(io.StringIO())
    logger = logging.getLogger("modelpress-test-closed-stream")
    logger.addHandler(handler)
    try:
        handler.stream.close()
        reopen_log_streams()
        assert handler.stream is sys.stderr
        logger.warning("written")  # no "--- Logging error ---"
    finally:
        logger.removeHandler(handler)
