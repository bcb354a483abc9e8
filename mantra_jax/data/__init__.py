"""Data: image reading, pristine photos, forgery masks and samples, the input pipelines.

images        any image file -> uint8 H x W x 3 RGB, with clear errors (training and inference)
photos        train / val / test split by file and the cached 256 x 256 patch index
bundled       the default photo set, from photos shipped inside installed packages
masks         forgery masks
forgeries     synthetic forgery samples
stream        what both grain pipelines share: patch source, order, shards, workers, val padding
imc_pipeline  grain pipeline of IMC samples (pristine patch, random leaf, random crop)
forgery_pipeline  grain pipeline of synthetic forgeries (localisation training)

Submodules are imported explicitly (``from mantra_jax.data import images``) so that light
users, e.g. inference, do not import grain.
"""
