"""IMC pretraining: `python -m experiments.imc385 --flagfile=experiments/flags/imc385.flags`.

Trains Featex with the IMC decision head to classify which of the published manipulations was
applied to a pristine patch, at one level of the hierarchy (0 = 7 families ... 5 = 380 leaves),
and reports top-k at that level and every coarser one.
"""
from absl import app, flags

from experiments import common

FLAGS = flags.FLAGS
common.define_common_flags("runs/imc385")
flags.DEFINE_integer("level", 5, "Hierarchy level trained (0-5: the paper's HL0 = 7 families ... "
                     "HL5 = 380 leaves).", lower_bound=0, upper_bound=5)
flags.DEFINE_integer("crop", 128, "Training crop inside each 256x256 patch.", lower_bound=8, upper_bound=256)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cfg = common.loop_config()  # its settings and work directory name checked before any work
    common.setup()
    from mantra_jax.imc import taxonomy
    from mantra_jax.nn import config
    from mantra_jax.train import imc, loop

    model_cfg = config.make_config(
        backbone=FLAGS.backbone, first_layer=FLAGS.first_layer, regular_filters=FLAGS.regular_filters,
        head="imc", num_classes=taxonomy.num_classes(FLAGS.level), width_scale=FLAGS.width_scale)
    index = common.photo_index(FLAGS.data_dir)
    task = imc.make_task(model_cfg, level=FLAGS.level, patch_index=index, learning_rate=FLAGS.learning_rate,
                         val_samples=FLAGS.val_samples, val_batch_size=FLAGS.val_batch_size, crop=FLAGS.crop,
                         workers=FLAGS.workers)
    common.finish(loop.train(task, cfg, files=common.run_files()))


if __name__ == "__main__":
    common.run(main)
