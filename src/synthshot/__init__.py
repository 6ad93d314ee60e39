"""synthshot: synthetic training images and CLIP classifiers from a few labelled images.

The package root stays import-light on purpose: the CLI must start fast, so heavy libraries
(torch, diffusers, transformers) are imported by the modules that need them.
"""

__version__ = "0.1.0"
