"""Shared fixtures: one tiny model kit per test session, built offline with real architectures."""

from __future__ import annotations

import os

import pytest

# Tests never touch the network, and the kit is loaded through the same code as hub models.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="session")
def tiny_kit(tmp_path_factory):
    """Path of a tiny model kit (stable-diffusion/, ip-adapter/, clip/), seed 0."""
    from synthshot.models.tiny import make_tiny_kit

    return make_tiny_kit(tmp_path_factory.mktemp("kit") / "tiny-kit", seed=0)


@pytest.fixture(scope="session")
def hub_options():
    from synthshot.models.hub import HubOptions

    return HubOptions(offline=True)
