"""A fixture for tests that run code which sets up logging in-process (log.txt handlers)."""
from __future__ import annotations

import logging

import pytest


@pytest.fixture
def restore_root_logger():
    """Remove the console and log.txt handlers that the test added to the root logger."""
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    yield
    for handler in root.handlers[:]:
        if handler not in before:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
