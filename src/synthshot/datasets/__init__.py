"""Benchmark datasets in one command: download (or take the user's archives), verify, extract,
lay out as the peers' code expects, and write the standard split in CoOp's format.

The CLI (``synthshot datasets list|prepare|verify``) is in :mod:`synthshot.datasets.cli`; the
library entry points are :func:`prepare_dataset`, :func:`verify_dataset`, :func:`dataset_folder`
and :func:`dataset_split_file`. Importing this package is light (no network, no torch).
"""

from __future__ import annotations

__all__ = ["dataset_folder", "dataset_split_file", "prepare_dataset", "verify_dataset"]


def __getattr__(name: str):
    if name in ("dataset_folder", "dataset_split_file", "prepare_dataset"):
        from synthshot.datasets import prepare

        return getattr(prepare, name)
    if name == "verify_dataset":
        from synthshot.datasets.verify import verify_dataset

        return verify_dataset
    raise AttributeError(name)
