import os

import pytest
import torch


# The core tests (`pytest -m core`): exactness of every family (state kinds, the gated delta rule), to_cache +
# generate, bf16 training, resume, LoRA, position-wise perplexity, passkey, the lm-eval adapter, models dispatched
# with a device_map (offloaded layers), file safety, the transformers version checks and the training-free length
# extension's Δ hook. CI runs them on the declared minimum transformers (.ci/run minimum); every other job runs them
# with the rest.
CORE_TEST_FILES = (
    "tests/test_forward.py",
    "tests/modeling/test_hybrids.py",
    "tests/test_state.py",
    "tests/test_security.py",
    "tests/test_transformers_versions.py",
    "tests/modeling/test_offload.py",
    "tests/training/test_precision.py",
    "tests/training/test_trainer.py",
    "tests/training/test_lora.py",
    "tests/evaluation/test_perplexity.py",
    "tests/evaluation/test_passkey.py",
    "tests/evaluation/test_harness.py",
    "tests/extend/test_delta_hook.py",
    "tests/modeling/test_gated_delta.py",
    "tests/test_state_kinds.py",
    "tests/modeling/test_xlstm.py",
)


def pytest_collection_modifyitems(config, items):
    root = config.rootpath
    for item in items:
        if item.path.relative_to(root).as_posix() in CORE_TEST_FILES:
            item.add_marker(pytest.mark.core)
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
