"""End-to-end ManTra-Net training: `python -m experiments.mantranet --flagfile=experiments/flags/mantranet.flags`.

Featex + the local anomaly detection network, trained on forgeries synthesised from pristine photos
(splicing, copy-move, removal, enhancement), from scratch or from an IMC checkpoint (Table 7), or
fine-tuned from a converted checkpoint of the authors' weights.
"""
from absl import app, flags

from experiments import common
from mantra_jax.errors import UserError

FLAGS = flags.FLAGS
common.define_common_flags("runs/mantranet")
ANOMALY = {"tac": ("tac", None), "df": ("df", None), "zf": ("zf", (7,)),
           "fac1": ("fac", (7,)), "fac2": ("fac", (7, 15)), "fac3": ("fac", (7, 15, 31))}
flags.DEFINE_enum("anomaly", "tac", list(ANOMALY), "Anomaly features (Table 6): tac = time-axis ConvLSTM over the "
                  "Z-scores (the paper's model); df = raw deviations; zf = global Z-score only; facN = the "
                  "Z-scores of the first N windows and the global one concatenated on the feature axis.")
flags.DEFINE_enum("lstm_gate", "hard_sigmoid", ["hard_sigmoid", "sigmoid"],
                  "The ConvLSTM's gate activation: hard_sigmoid (the released model's) or sigmoid (no dead gates).")
flags.DEFINE_list("windows", ["7", "15", "31"], "Window sizes of the local deviations (tac and df).")
flags.DEFINE_enum("init", "random", ["random", "half_freeze", "half_random", "authors"],
                  "Initialisation (Table 7): random; half_freeze = Featex from --imc_checkpoint, frozen; "
                  "half_random = Featex from --imc_checkpoint at --featex_learning_rate; authors = every weight "
                  "from a converted checkpoint of the authors' model (--imc_checkpoint).")
flags.DEFINE_string("imc_checkpoint", "", "Checkpoint directory for --init other than random.")
flags.DEFINE_float("featex_learning_rate", 5e-5, "Featex learning rate with --init=half_random.", lower_bound=0.0)
flags.DEFINE_list("type_weights", ["1", "1", "1", "1"], "Sampling weights of splicing, copy-move, removal, enhancement.")
flags.DEFINE_float("pristine_share", 0.0, "Share of untouched samples (empty masks).", lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_float("self_donor_prob", 0.0, "Share of splices whose donor is the sample's own patch "
                   "(matched content: the splice differs by its resampling and processing only).",
                   lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_float("donor_history_prob", 0.0, "Share of splices whose donor is first processed by a "
                   "random IMC manipulation (another processing history).", lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_bool("postprocess", False, "Random whole-image JPEG and downscaling of the samples (augmentation).")
flags.DEFINE_integer("patch_size", 256, "Training and validation window inside each 256x256 pristine patch.",
                     lower_bound=16, upper_bound=256)
flags.DEFINE_integer("val_per_type", 64, "Validation samples per forgery type.", lower_bound=1)


def _validate():
    try:
        windows = tuple(int(w) for w in FLAGS.windows)
        weights = tuple(float(w) for w in FLAGS.type_weights)
    except ValueError as e:
        raise app.UsageError(f"--windows and --type_weights take comma-separated numbers: {e}")
    if any(w < 1 or w % 2 == 0 for w in windows):
        raise app.UsageError(f"--windows must be odd sizes, got {FLAGS.windows}")
    if len(weights) != 4 or min(weights) < 0 or sum(weights) == 0:
        raise app.UsageError(f"--type_weights needs 4 non-negative weights, not all zero; got {FLAGS.type_weights}")
    if FLAGS.init != "random" and not FLAGS.imc_checkpoint:
        raise app.UsageError(f"--init={FLAGS.init} needs --imc_checkpoint")
    return windows, weights


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    windows, weights = _validate()
    cfg = common.loop_config()  # its settings and work directory name checked before any work
    common.setup()
    from mantra_jax import checkpoint
    from mantra_jax.nn import config
    from mantra_jax.train import loop, mantranet

    anomaly, fixed_windows = ANOMALY[FLAGS.anomaly]
    model_cfg = config.make_config(
        backbone=FLAGS.backbone, first_layer=FLAGS.first_layer, regular_filters=FLAGS.regular_filters,
        head="ladn", anomaly=anomaly, windows=fixed_windows or windows, width_scale=FLAGS.width_scale,
        lstm_gate=FLAGS.lstm_gate)
    if FLAGS.init != "random":  # the feature extractor's shape comes from the checkpoint
        source = checkpoint.read_model_config(FLAGS.imc_checkpoint)
        model_cfg = model_cfg.replace(**config.featex_config_fields(source))
        if FLAGS.init == "authors":
            if source.head != "ladn":
                raise UserError(f"--init=authors takes every weight from a ManTra-Net checkpoint; "
                                f"{FLAGS.imc_checkpoint} holds the {source.head!r} head (an IMC model): "
                                "use --init=half_freeze or half_random for its Featex")
            model_cfg = source
    index = common.photo_index(FLAGS.data_dir)
    task = mantranet.make_task(
        model_cfg, patch_index=index, learning_rate=FLAGS.learning_rate, init=FLAGS.init,
        checkpoint=FLAGS.imc_checkpoint or None, featex_learning_rate=FLAGS.featex_learning_rate,
        type_weights=weights, pristine_share=FLAGS.pristine_share,
        postprocess={} if FLAGS.postprocess else None, val_per_type=FLAGS.val_per_type,
        val_batch_size=FLAGS.val_batch_size, workers=FLAGS.workers, patch_size=FLAGS.patch_size,
        self_donor_prob=FLAGS.self_donor_prob, donor_history_prob=FLAGS.donor_history_prob)
    common.finish(loop.train(task, cfg, files=common.run_files()))


if __name__ == "__main__":
    common.run(main)
