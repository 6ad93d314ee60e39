"""CLIP image features, single-scale and LGCLIP multi-scale, with a per-file cache.

    multiscale.py  the math: seeded crop boxes covering s/10 of the image, weights s/sum(s), combination
    preprocess.py  pixels: the encoder's own preprocessing, and crops resized + normalised by hand
    backends.py    image encoders (transformers `CLIPModel`, open_clip where it imports), chosen by name
    extract.py     encode image files in batches (all crops of a batch in one forward) -> FeatureSet
    cache.py       features as safetensors + JSON sidecar; only missing or changed files are recomputed

Import the submodules directly: they pull in torch, which this package root must not do.
"""
