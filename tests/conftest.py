"""Shared fixtures: a fixed seed, and a per-test demo cache so tests never share state."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_isolate(monkeypatch, tmp_path):
    torch.manual_seed(0)
    monkeypatch.setenv("MODELPRESS_CACHE", str(tmp_path / "cache"))
