"""Shared fixtures: a fixed seed, a per-test demo cache so tests never share state, and library log
handlers that never write to an earlier test's closed capture stream."""

import logging
import sys

import pytest
import torch

from compress.core import log


@pytest.fixture(autouse=True)
def _seed_and_isolate(monkeypatch, tmp_path):
    torch.manual_seed(0)
    monkeypatch.setenv("MODELPRESS_CACHE", str(tmp_path / "cache"))


@pytest.fixture(autouse=True)
def _open_log_streams():
    reopen_log_streams()


def reopen_log_streams() -> None:
    # A library (transformers) creates its StreamHandler on the sys.stderr of the moment; under pytest
    # that can be a test's capsys stream, closed when that test ends, and writing to it later prints
    # "--- Logging error ---" with a traceback into another test's output.
    for handler in log.stream_handlers():
        if type(handler) is logging.StreamHandler and getattr(handler.stream, "closed", False):
            handler.stream = sys.stderr  # not setStream: it flushes the old stream, which raises when closed
