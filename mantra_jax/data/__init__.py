"""Data: image reading, pristine photos, the IMC input pipeline, forgery masks and samples.

images        any image file -> uint8 H x W x 3 RGB, with clear errors (training and inference)
photos        train / val / test split by file and the cached 256 x 256 patch index
bundled       the default photo set, from photos shipped inside installed packages
imc_pipeline  grain pipeline of IMC samples (pristine patch, random leaf, random crop)
masks         forgery masks
forgeries     synthetic forgery samples

Submodules are imported explicitly (``from mantra_jax.data import images``) so that light
users, e.g. inference, do not import grain.
"""
