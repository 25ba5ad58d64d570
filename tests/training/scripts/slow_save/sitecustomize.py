"""Test hook, imported at interpreter start when this folder is on PYTHONPATH (tests/training/test_interruption.py).

* `HF_LONGSSM_TEST_PID_DIR`: every process writes its PID there (the launcher and its workers);
* `HF_LONGSSM_TEST_SLOW_SAVE`: seconds each checkpoint save pauses inside transformers' save (after the optimizer,
  before `trainer_state.json`), so a test can kill a run *during* a save deterministically.
"""

import os


if os.environ.get("HF_LONGSSM_TEST_PID_DIR"):
    with open(os.path.join(os.environ["HF_LONGSSM_TEST_PID_DIR"], f"{os.getpid()}.pid"), "w") as f:
        f.write(str(os.getppid()))

if os.environ.get("HF_LONGSSM_TEST_SLOW_SAVE"):
    import time

    import transformers

    pause = float(os.environ["HF_LONGSSM_TEST_SLOW_SAVE"])
    original = transformers.Trainer._save_rng_state

    def _slow_save_rng_state(self, output_dir):
        original(self, output_dir)
        time.sleep(pause)

    transformers.Trainer._save_rng_state = _slow_save_rng_state
