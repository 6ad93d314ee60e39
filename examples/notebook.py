# %% [markdown]
# # synthshot from Python
#
# The same flow as `synthshot run examples/quickstart.yaml`, cell by cell: load a config with
# overrides, run the stages, read the results, load the trained classifier, classify images and
# export it. Open it as a notebook (VS Code, Jupytext) or run it as a script from the repository
# root: `python examples/notebook.py`. Offline: the tiny model kit and a drawn demo dataset.

# %%
import os
from pathlib import Path

import synthshot

OUT = Path(os.environ.get("SYNTHSHOT_NOTEBOOK_OUT", "runs/notebook"))
overrides = {"output_dir": str(OUT)}
if os.environ.get("SYNTHSHOT_TINY_KIT"):  # a kit built elsewhere (the tests share one)
    overrides["models.tiny_kit"] = os.environ["SYNTHSHOT_TINY_KIT"]
exp = synthshot.Experiment.from_config(Path("examples") / "quickstart.yaml", **overrides)
print(exp.config.stages)

# %% Run every stage (those already done are skipped); `exp.run(["data", "similarity"])` runs some.
ran = exp.run()
print("ran:", ran)

# %% The results: one entry per method and split, the test split reported, never used to choose.
for stage, results in exp.results().items():
    for entry in results["results"]:
        print(f"{stage:9} {entry['method']:12} {entry['split']:5} top-1 {100 * entry['metrics']['top1']:.2f}%")

# %% The trained classifier: the method best on validation unless you name one.
clf = synthshot.load_classifier(OUT, method="finetune")
images = sorted((OUT / "demo-data" / "circle").glob("*.png"))[:3]
for path, top in zip(images, clf.predict(images, top_k=2)):
    print(path.name, top)

# %% A standalone export: loadable with transformers and safetensors alone.
folder = synthshot.export_classifier(OUT, OUT.with_name(OUT.name + "-export"), method="finetune", force=True)
print(sorted(p.name for p in folder.iterdir()))
