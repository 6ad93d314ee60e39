"""The install is reproducible: constraints.txt pins every dependency exactly, within the ranges
that pyproject.toml gives library users, and the installed stack is the pinned one."""

from __future__ import annotations

import re
import pytest as _pytest

tomllib = _pytest.importorskip("tomllib")  # Python 3.11+
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
CORE = ("torch", "diffusers", "transformers", "peft", "accelerate", "safetensors", "huggingface-hub", "numpy")


def pins() -> dict[str, Version]:
    found = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        assert match, f"constraints.txt line {line!r} is not an exact pin (name==version)"
        found[canonicalize_name(match[1])] = Version(match[2])
    return found


def requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(text) for text in [*project["dependencies"], *project["optional-dependencies"]["test"]]]


def test_every_dependency_is_pinned_within_its_range():
    pinned = pins()
    for requirement in requirements():
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{name} is a dependency but constraints.txt does not pin it"
        assert requirement.specifier.contains(pinned[name]), f"{name}=={pinned[name]} is outside {requirement}"


@pytest.mark.parametrize("name", CORE)
def test_the_installed_stack_is_the_pinned_one(name):
    """Run the tests on what users install: `pip install -c constraints.txt ...` (see README)."""
    installed = Version(metadata.version(name))
    assert Version(installed.public) == pins()[canonicalize_name(name)], (
        f"{name} {installed} is installed but constraints.txt pins {pins()[canonicalize_name(name)]}: "
        "reinstall with -c constraints.txt, or refresh it with scripts/refresh_constraints.sh"
    )
