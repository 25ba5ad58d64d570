"""The layer rule of ARCHITECTURE.md, checked by `.ci/check_imports.py` (static layers + fresh-process imports)."""

import importlib.util
import shutil
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def checker():
    spec = importlib.util.spec_from_file_location("check_imports", ROOT / ".ci" / "check_imports.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_package_follows_the_layer_rule(checker):
    assert checker.static_check() == []


def test_an_upward_import_and_a_lazy_import_are_reported(checker, tmp_path):
    shutil.copytree(ROOT / "hf_longssm", tmp_path / "hf_longssm")
    state = tmp_path / "hf_longssm" / "state.py"
    state.write_text(
        state.read_text() + "\nfrom .training import StatePassingConfig\n\n\ndef f():\n    from . import hub\n"
    )
    checker.ROOT, checker.PACKAGE = tmp_path, tmp_path / "hf_longssm"
    problems = checker.static_check()
    assert any("hf_longssm.state (layer 1) imports hf_longssm.training (layer 6)" in p for p in problems), problems
    assert any("imports hf_longssm.hub inside a function" in p for p in problems), problems


def test_every_module_imports_first_in_a_fresh_process(checker):
    assert checker.dynamic_check() == []
