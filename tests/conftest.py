import os

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_slow = pytest.mark.skip(reason="slow: set RUN_SLOW=1")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if "slow" in item.keywords and os.environ.get("RUN_SLOW", "0") != "1":
            item.add_marker(skip_slow)


@pytest.fixture(autouse=True)
def _seeded():
    # Tests draw random token ids with the global generator: seed it so every test sees the same data on every run.
    torch.manual_seed(0)
    yield
