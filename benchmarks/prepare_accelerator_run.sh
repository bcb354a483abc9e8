#!/usr/bin/env bash
# Fills carry/ (git-ignored) with what benchmarks/accelerator_run.py needs on a GPU
# machine that reaches no package registry and does not see ../shared:
#   carry/wheels/    grain and PyWavelets with what they need that the machine's image lacks
#                    (array-record, portpicker; tensorboardX for the trainer's TensorBoard events;
#                    in wheels/fallback, a protobuf installed there only if the image's is too old),
#                    as wheels for its Python (3.12, x86-64 manylinux), pinned to the versions
#                    tested here;
#   carry/pristine/  Kodak24 and CBSD68 from the shared pristine photos (92 PNGs, 34 MB).
# Run it here, from the repository root, before the device call that carries "carry":
#   bash benchmarks/prepare_accelerator_run.sh
# Environment: PYTHON (a python with pip; default python3), PYTHON_VERSION (default 3.12),
# PHOTOS (default ../shared/data/pristine), DEST (default carry). About 42 MB in all, under the
# 64 MiB the device tool carries together with the checkout.
set -euo pipefail
python=${PYTHON:-python3}
version=${PYTHON_VERSION:-3.12}
photos=${PHOTOS:-../shared/data/pristine}
dest=${DEST:-carry}
mkdir -p "$dest/wheels/fallback" "$dest/pristine"
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$dest/wheels" grain==0.2.18 array-record==0.8.6 portpicker==1.6.0 PyWavelets==1.9.0 tensorboardX==2.6.5
# Installed there only if grain fails to import over the image's protobuf (grain's generated code
# needs >= 5.28.3; 7.36.2 is the version tested here).
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$dest/wheels/fallback" protobuf==7.36.2
for set in kodak24 cbsd68; do
    rm -rf "${dest:?}/pristine/$set"
    cp -r "$photos/$set" "$dest/pristine/$set"
done
ls "$dest/wheels" "$dest/wheels/fallback"
du -sh "$dest/wheels" "$dest/pristine"
