"""synthshot: synthetic training images and CLIP classifiers from a few labelled images.

The package root stays import-light on purpose: the CLI must start fast, so heavy libraries
(torch, diffusers, transformers) are imported by the modules that need them.
"""

__version__ = "0.1.0"

__all__ = ["Classifier", "Experiment", "RunConfig", "export_classifier", "load_classifier", "load_config", "run"]

# The Python API, imported on first use (`synthshot.Experiment`, `synthshot.load_classifier`, ...):
#
#     exp = synthshot.Experiment.from_config("cfg.yaml", **{"data.shots": 4})
#     exp.run(); exp.results()
#     clf = synthshot.load_classifier(exp.layout.out); clf.predict(["image.jpg"])
_API = {
    "Experiment": "synthshot.experiment",
    "RunConfig": "synthshot.config",
    "load_config": "synthshot.config",
    "Classifier": "synthshot.classifier",
    "load_classifier": "synthshot.classifier",
    "export_classifier": "synthshot.classifier",
    "run": "synthshot.runs",
}


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'synthshot' has no attribute {name!r}")
