"""The trace study: does a small CPU-trained ManTra-Net follow manipulation traces? (RESULTS.md)

  python -m experiments.trace_study --pristine_dir=../shared/data/pristine \
      --coverage_dir=../shared/data/coverage --casia2_dir=../shared/data/casia2_dev --out=runs/trace

Parts (mantra_jax/study/trace.py), each resumable: probe (which features carry traces), train
(the synthesis ablation, end to end from the IMC model), dev (COVERAGE and casia2_dev, development
sets), diagnose (texture, objects or the paste), gates (does the anomaly network still learn),
image_score (chosen on synthetic images). A rerun
continues where it stopped. Nothing is chosen on the development sets.
"""
from __future__ import annotations

from pathlib import Path

from absl import app, flags

from experiments import common


FLAGS = flags.FLAGS
TRAINER = True  # runs trainers: SIGTERM exits 75 (rerun to continue), as a trainer's does
flags.DEFINE_string("out", "runs/trace", "Study folder: one work directory per run, maps, eval/, the tables.")
flags.DEFINE_string("pristine_dir", None, "Folder of pristine photos (the training subsets are its sub-folders).")
flags.DEFINE_list("pristine_subsets", ["kodak24", "cbsd68", "mcmaster18"], "Sub-folders of --pristine_dir used.")
flags.DEFINE_string("coverage_dir", None, "The COVERAGE folder (image/, mask/, mask_aligned/, pairs.csv).")
flags.DEFINE_string("casia2_dir", None, "The casia2_dev folder (tampered/, mask/).")
flags.DEFINE_string("imc_checkpoint", "checkpoints/imc_small", "IMC model whose Featex the runs start from.")
flags.DEFINE_list("references", ["content_splices=runs/study/e2e_half_random"],
                  "name=checkpoint pairs scored beside the runs (the default: the small study's model trained "
                  "on content splices; a missing folder is left out).")
flags.DEFINE_string("flagfile_e2e", "experiments/flags/trace_e2e.flags", "Flags of the end-to-end runs.")
flags.DEFINE_integer("seed", 0, "Seed of every run and of the probe images.", lower_bound=0)
flags.DEFINE_list("parts", ["probe", "train", "dev", "diagnose", "gates", "image_score"],
                  "Parts to run (add package to ship the chosen model as --package_dir).")
flags.DEFINE_string("package_dir", "checkpoints/mantranet_small", "Where the package part ships the chosen model.")


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from mantra_jax.study import trace

    references = {}
    for item in FLAGS.references:
        name, _, path = item.partition("=")
        if not path:
            raise app.UsageError(f"--references takes name=checkpoint pairs, got {item!r}")
        references[name] = Path(path)
    trace.TraceStudy(out=Path(FLAGS.out), pristine_dir=FLAGS.pristine_dir and Path(FLAGS.pristine_dir),
                     imc_checkpoint=Path(FLAGS.imc_checkpoint), references=references,
                     coverage_dir=FLAGS.coverage_dir and Path(FLAGS.coverage_dir),
                     casia2_dir=FLAGS.casia2_dir and Path(FLAGS.casia2_dir), flagfile=FLAGS.flagfile_e2e,
                     pristine_subsets=tuple(FLAGS.pristine_subsets), seed=FLAGS.seed,
                     package_dir=Path(FLAGS.package_dir)).run(set(FLAGS.parts))


if __name__ == "__main__":
    common.run(main, trainer=TRAINER)
