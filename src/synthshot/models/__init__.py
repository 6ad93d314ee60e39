"""Model loading (hub id or local folder, offline-aware) and the offline tiny model kit.

Import the submodules directly (`synthshot.models.diffusion`, `synthshot.models.clip`,
`synthshot.models.tiny`): they pull in torch, diffusers and transformers, which this package
root must not do.
"""
