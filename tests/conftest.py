"""Shared fixtures: a fixed seed, a per-test demo cache so tests never share state, and library log
handlers that never write to an earlier test's closed capture stream."""

import logging
import sys

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_isolate(monkeypatch, tmp_path):
    torch.manual_seed(0)
    monkeypatch.setenv("MODELPRESS_CACHE", str(tmp_path / "cache"))


@pytest.fixture(autouse=True)
def _open_log_streams():
    reopen_log_streams()
    yield


def reopen_log_streams() -> None:
    # A library (transformers) creates its StreamHandler on sys.stderr when first used; under pytest
    # that is the capture stream of whichever test came first, closed when that test ends. Writing to it
    # later prints "--- Logging error ---" with a traceback into another test's output.
    loggers = [
        logging.getLogger(),
        *(lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)),
    ]
    for logger in loggers:
        for handler in logger.handlers:
            stream = getattr(handler, "stream", None)
            if type(handler) is logging.StreamHandler and getattr(stream, "closed", False):
                handler.stream = sys.stderr  # not setStream: it flushes the old stream, which raises when closed
