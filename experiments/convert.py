"""Imports the authors' released Keras weights into a checkpoint (mantra_jax/infer/convert.py says how).

  python -m experiments.convert --h5 ManTraNet_Ptrain4.h5 --out DIR [--variant Ptrain4] [--force]

Exit status: 0 converted, 2 the file cannot be converted or a flag is wrong (one message,
`error: ...`; experiments/common.py, `run`).
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from absl import app, flags

from experiments import common
from mantra_jax.infer import convert
from mantra_jax.nn import model

FLAGS = flags.FLAGS
flags.DEFINE_string("h5", None, "The Keras HDF5 file (weights or full model).", required=True)
flags.DEFINE_string("out", None, "Checkpoint directory to write.", required=True)
flags.DEFINE_enum("variant", None, convert.VARIANTS, "Which release the file is; needed only where the file cannot "
                  "tell (default: model_config, then file name, then Ptrain4 / Ptrain1 by width).")
flags.DEFINE_bool("force", False, "Replace a checkpoint already in --out.")


def main(argv: Sequence[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    recognition, cfg, variables = convert.convert(FLAGS.h5, FLAGS.out, variant=FLAGS.variant, force=FLAGS.force)
    for warning in recognition.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    total, _ = model.count_params(variables)
    print(f"read {FLAGS.h5}: {recognition.variant} ({recognition.reason}); "
          f"first layer {cfg.first_width} channels, windows {list(cfg.windows)}, transform "
          f"{cfg.transform_activation or 'linear'}; {total:,} values")
    print(f"wrote checkpoint to {Path(FLAGS.out).absolute()}")
    return 0


if __name__ == "__main__":
    common.run(main)
