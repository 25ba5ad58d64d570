"""Package versions recorded in results files and model cards."""

import platform

import torch
import transformers

from hf_longssm.versions import CARD_PACKAGES, package_versions


def test_versions_are_the_installed_ones_in_the_order_given():
    versions = package_versions(["transformers", "python", "torch"])
    assert list(versions) == ["transformers", "python", "torch"]
    assert versions == {
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def test_packages_not_installed_are_left_out():
    assert package_versions(["torch", "surely-not-an-installed-package"]) == {"torch": torch.__version__}


def test_the_default_is_the_card_packages():
    assert set(package_versions()) <= set(CARD_PACKAGES) and "transformers" in package_versions()
