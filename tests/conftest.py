"""Shared fixtures: a fixed seed, a per-test demo cache so tests never share state, and library log
handlers that never write to an earlier test's closed capture stream."""

import pytest
import torch

from compress.core import log


@pytest.fixture(autouse=True)
def _seed_and_isolate(monkeypatch, tmp_path):
    torch.manual_seed(0)
    monkeypatch.setenv("MODELPRESS_CACHE", str(tmp_path / "cache"))


@pytest.fixture(autouse=True)
def _open_log_streams():
    log.reopen_closed_handlers()
