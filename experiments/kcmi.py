"""The paper's KCMI feature test: camera-model identification by k-NN on mean Featex features.

  python -m experiments.kcmi --checkpoint DIR [--step best] --data_dir CAMERAS --out OUTDIR [--k 7 --crop 512 --seed 0]

CAMERAS holds one sub-folder of photos per camera model. Works with any checkpoint (IMC or
ManTra-Net): only its Featex is used. Writes OUTDIR/kcmi_report.json (with a "run" entry: the
checkpoint step and why, the model configuration, the command line), kcmi_report.md and
kcmi_confusion.png, and prints the accuracy per camera. Protocol and conventions:
mantra_jax/eval/kcmi.py.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from absl import flags

from experiments import common
from mantra_jax import provenance
from mantra_jax.eval import kcmi
from mantra_jax.nn import config

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Checkpoint folder (IMC or ManTra-Net).")
common.define_step_flag()
flags.DEFINE_string("data_dir", None, "Folder with one sub-folder of photos per camera model.")
common.define_out_flags("Output folder.")
flags.DEFINE_integer("k", kcmi.DEFAULT_K, "Neighbours voting.", lower_bound=1)
flags.DEFINE_integer("crop", kcmi.DEFAULT_CROP, "Side of the centre window averaged (smaller photos: whole).",
                     lower_bound=8)
flags.DEFINE_integer("seed", 0, "Seed of the split into halves.", lower_bound=0)
flags.DEFINE_enum("metric", "cosine", list(kcmi.METRICS), "cosine (L2-normalised features) or euclidean (raw).")
flags.DEFINE_enum("precision", "float32", config.PRECISIONS, "Computation dtype.")


def print_summary(result: dict, out: str) -> None:
    """Accuracy per camera as a table on stdout, with the step scored."""
    title = (f"KCMI accuracy {100 * result['accuracy']:.1f} % over {result['n_test']} photos of "
             f"{result['n_cameras']} cameras (chance {100 * result['chance_accuracy']:.1f} %, majority "
             f"{100 * result['majority_accuracy']:.1f} %, balanced {100 * result['balanced_accuracy']:.1f} %; "
             f"{result['k']}-NN, {result['metric']})\n{provenance.describe(result['run'])}")
    rows = [[name, r["n_images"], r["n_fit"], r["n_test"], f"{100 * r['accuracy']:.1f}"]
            for name, r in result["per_camera"].items()]
    common.print_table(["camera", "photos", "fitted", "scored", "accuracy %"], rows, title=title)
    print(f"report: {Path(out) / 'kcmi_report.md'}")


def main(argv: Sequence[str]) -> None:
    common.start_evaluation_cli(argv, FLAGS, ("checkpoint", "data_dir", "out"))
    with common.output_folder("KCMI evaluation", FLAGS.checkpoint):
        result = kcmi.evaluate_checkpoint(FLAGS.checkpoint, FLAGS.data_dir, FLAGS.out, k=FLAGS.k, crop=FLAGS.crop,
                                          seed=FLAGS.seed, metric=FLAGS.metric, step=FLAGS.step,
                                          precision=FLAGS.precision)
    print_summary(result, FLAGS.out)


if __name__ == "__main__":
    common.run(main)
