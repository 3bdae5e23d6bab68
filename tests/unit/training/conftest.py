"""Fixtures shared by the training tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def ssf_config(tiny_config):
    """The tiny config with the ssfilter method, batches of 6 and a low ``tau``."""
    cfg = tiny_config
    cfg.train.method = "ssfilter"
    cfg.data.batch_size = 6
    cfg.batch_filter.tau = 0.5  # low, so that material candidates and restoration occur in a short run
    return cfg
