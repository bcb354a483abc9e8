"""The trace study: does a small CPU-trained ManTra-Net follow manipulation traces, or content?

Parts, each resumable (a finished part's output is kept and reused; a training run continues from
its checkpoint), run in this order by `run`:

- ``probe``: which features carry traces, before any long training (`mantra_jax.eval.probe`): a
  linear probe on local deviation statistics of each feature extractor, on content-neutral local
  manipulations of the held-out test patches, fitted on the validation patches. Rows are saved one
  by one to ``probe.json``.
- ``train``: the end-to-end runs of `RUNS` (the trainer's command, one process each, in the
  study's folder), the synthesis ablation.
- ``dev``: every model (the trained runs, the reference checkpoints and the no-training noise
  baseline) on the development sets: COVERAGE (its 100 pairs, the fitted masks of mask_aligned/
  where the released ones do not fit) and casia2_dev; maps cached per model (`diagnose.CachedMaps`).
- ``diagnose``: what the COVERAGE maps follow (texture, the pasted region against its source and
  against the genuine look-alike object).
- ``gates``: whether each run's anomaly network still learns (`diagnose.anomaly_network_health`:
  the logits' spread and the gradient reaching its ConvLSTM against the output layer's).
- ``image_score``: image-level scores of a map, chosen on synthetic images (half forged, half
  untouched, from the test patches) and then reported on COVERAGE against its originals.
- ``package`` (only when asked): the model of `shipping_choice` into `package_dir`.
- ``trace_results.md``, every table, after any part.

Checkpoints are chosen by each run's synthetic validation loss; nothing is chosen on the
development sets. The model to ship is chosen by a rule fixed before any development figure was
computed (`shipping_choice`): the end-to-end model whose own map scores the highest mean pixel AUC
on the probe's content-neutral synthetic test images (the "map of" rows of probe.json).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mantra_jax.study import runs

# name -> (flags added to the study's end-to-end flagfile, what the run changes)
RUNS = {
    "e2e_trace_ppfalse": (["--postprocess=false"], "trace synthesis, from the IMC model's Featex"),
    "e2e_trace_pptrue": (["--postprocess=true"], "trace synthesis + whole-image JPEG/resize, from the IMC model's Featex"),
    # The post-processed task as a second stage: the whole first model, 500 more steps at 3e-4.
    "e2e_trace_pp_stage2": (["--postprocess=true", "--init=authors", "--imc_checkpoint={e2e_trace_ppfalse}",
                             "--learning_rate=3e-4", "--epochs=2"],
                            "e2e_trace_ppfalse, then 500 steps with whole-image JPEG/resize"),
    # The anomaly network alone on the IMC model's (frozen) Featex, which the probe shows carries
    # resampling, noise and blur traces under the network's own statistic.
    "e2e_trace_half_freeze": (["--postprocess=false", "--init=half_freeze"],
                              "trace synthesis, the IMC model's Featex frozen"),
    # The same with smooth sigmoid gates in the ConvLSTM (a hard sigmoid has no gradient beyond
    # +-2.5: the frozen run's ConvLSTM gradient had fallen to 1/300 of the output layer's).
    "e2e_trace_half_freeze_sigmoid": (["--postprocess=false", "--init=half_freeze", "--lstm_gate=sigmoid"],
                                      "as e2e_trace_half_freeze, sigmoid ConvLSTM gates"),
    "e2e_trace_sigmoid": (["--postprocess=false", "--lstm_gate=sigmoid"],
                          "as e2e_trace_ppfalse, sigmoid ConvLSTM gates"),
}
BASELINE = "noise_baseline"
# Read also through the anomaly network's own statistic alone (no energy ratio): do its Z-scores
# see the trace these features carry?
ZSCORE_ONLY_ROWS = ("first layer (SRM + Bayar), random", "Featex, IMC-385 (imc_small)")
IMAGE_SCORES = ("mean", "max", "p99_blur", "top1pct_mean")


@dataclasses.dataclass
class TraceStudy:
    out: Path
    pristine_dir: Path | None  # the photo folder of the training runs (its subsets linked)
    imc_checkpoint: Path  # Featex of the runs (--init=half_random)
    references: dict[str, Path]  # name -> checkpoint scored beside the runs (e.g. the shipped model)
    coverage_dir: Path | None = None
    casia2_dir: Path | None = None
    flagfile: str = "experiments/flags/trace_e2e.flags"
    pristine_subsets: tuple[str, ...] = ("kodak24", "cbsd68", "mcmaster18")
    seed: int = 0
    package_dir: Path = Path("checkpoints/mantranet_small")
    log: Callable[[str], None] = lambda m: print(f"[trace {time.strftime('%H:%M:%S')}] {m}", flush=True)

    # ------------------------------------------------------------------ data
    @property
    def photos(self) -> Path:
        return self.out / "data" / "pristine"

    def prepare(self) -> None:
        """Links the training photo subsets and COVERAGE's best mask set (nothing copied)."""
        runs.link_subsets(self.pristine_dir, self.photos, self.pristine_subsets)
        if self.coverage_dir:
            runs.link_coverage_masks(self.coverage_dir, self.out / "data" / "coverage_masks_all")

    def _index(self):
        from mantra_jax.data import photos

        return photos.build_patch_index(self.photos, patch=256)

    def _patches(self, split: str) -> list[np.ndarray]:
        from mantra_jax.data import stream

        index = self._index()
        source = stream.PatchSource(index.root, index.entries(split), index.patch_size)
        return [source.patch(e) for e in index.entries(split)]

    # ------------------------------------------------------------------ models
    def models(self) -> dict[str, Path]:
        """Every end-to-end model of the study: references first, then the finished runs."""
        out = {}
        for name, path in self.references.items():
            if (Path(path) / "model_config.json").exists():
                out[name] = Path(path)
            elif (self.out / "maps" / name).is_dir():  # scored earlier: its results stay in the tables
                out[name] = Path(path)
            else:
                self.log(f"reference {name}: {path} is not a checkpoint folder; left out")
        for name in RUNS:
            if (self.out / name / "final_metrics.json").exists():
                out[name] = self.out / name
        return out

    def _extractors(self) -> dict[str, Callable[[], Callable[[np.ndarray], np.ndarray]]]:
        """name -> a function that builds that feature extractor (models load only when needed)."""
        import jax

        from mantra_jax import checkpoint
        from mantra_jax.nn import featex, layers
        from mantra_jax.nn import model as model_lib

        def featex_of(params, cfg):
            fn = jax.jit(lambda x: featex.apply(params, model_lib.preprocess(x), cfg))
            return lambda rgb: np.asarray(fn(rgb[None]))[0]

        def first_layer_of(params, cfg):
            kernel = featex.first_layer_kernel(params, cfg)
            fn = jax.jit(lambda x: layers.symmetric_conv(model_lib.preprocess(x), kernel))
            return lambda rgb: np.asarray(fn(rgb[None]))[0]

        def imc(part):
            cfg, variables = checkpoint.load_model(self.imc_checkpoint)
            if part == "random":
                variables = model_lib.init(jax.random.key(self.seed), cfg)
            return cfg, variables["params"]["Featex"]

        def trained(path):
            cfg, variables = checkpoint.load_model(path)
            return featex_of(variables["params"]["Featex"], cfg)

        extractors = {
            "first layer (SRM + Bayar), random": lambda: first_layer_of(*imc("random")[::-1]),
            "first layer (SRM + Bayar), IMC-trained": lambda: first_layer_of(*imc("trained")[::-1]),
            "Featex, random": lambda: featex_of(*imc("random")[::-1]),
            "Featex, IMC-385 (imc_small)": lambda: featex_of(*imc("trained")[::-1]),
        }
        for name, path in self.models().items():
            extractors[f"Featex of {name}"] = lambda path=path: trained(path)
        return extractors

    # ------------------------------------------------------------------ parts
    def run_probe(self) -> dict:
        from mantra_jax.eval import baselines, probe

        path = self.out / "probe.json"
        table = json.loads(path.read_text()) if path.exists() else {}
        fit = probe.probe_set(self._patches("val"), seed=self.seed)
        test = probe.probe_set(self._patches("test"), seed=self.seed + 1)
        if BASELINE not in table:
            table[BASELINE] = {"readout": "its own map", **probe.map_auc(baselines.noise_inconsistency, test)}
            path.write_text(json.dumps(table, indent=1))
        extractors = self._extractors()
        rows = [(name, name, True) for name in extractors]
        rows += [(f"{name}, Z-scores only", name, False) for name in ZSCORE_ONLY_ROWS]
        for key, name, with_energy in rows:
            if key in table:
                continue
            start = time.time()
            readout = "linear probe" if with_energy else "linear probe, Z-scores only"
            table[key] = {"readout": readout, **probe.run_probe(extractors[name](), fit, test, seed=self.seed,
                                                                with_energy=with_energy),
                          "seconds": round(time.time() - start, 1)}
            self.log(f"probe {key}: all {table[key]['all']:.3f}")
            path.write_text(json.dumps(table, indent=1))
        from mantra_jax.infer.predict import Predictor

        for name, ckpt in self.models().items():
            key = f"map of {name}"
            if key not in table:
                table[key] = {"readout": "the model's own map", **probe.map_auc(Predictor.from_checkpoint(ckpt).predict, test)}
                self.log(f"probe {key}: all {table[key]['all']:.3f}")
                path.write_text(json.dumps(table, indent=1))
        return table

    def commands(self) -> dict[str, list[str]]:
        # Later flags win: a run's own flags (RUNS) come after the defaults they replace.
        runs = {name: (self.out / name).absolute() for name in RUNS}
        return {name: [sys.executable, "-m", "experiments.mantranet", f"--flagfile={self.flagfile}",
                       "--init=half_random", f"--imc_checkpoint={Path(self.imc_checkpoint).absolute()}",
                       *[e.format(**runs) for e in extra],
                       f"--workdir={self.out / name}", f"--data_dir={self.photos}", f"--seed={self.seed}"]
                for name, (extra, _) in RUNS.items()}

    def run_training(self, name: str) -> None:
        if not (self.out / name / "final_metrics.json").exists():
            runs.run_training(name, self.out / name, self.commands()[name], self.log)

    def _predict_fn(self, name: str, path: Path | None):
        from mantra_jax.eval import baselines
        from mantra_jax.eval.diagnose import CachedMaps

        if name == BASELINE:
            return CachedMaps(baselines.noise_inconsistency, self.out / "maps" / name)

        @functools.cache
        def predictor():  # loaded on the first map that is not cached
            from mantra_jax.infer.predict import Predictor

            return Predictor.from_checkpoint(path)

        return CachedMaps(lambda rgb: predictor().predict(rgb), self.out / "maps" / name)

    def dev_sets(self) -> dict[str, tuple]:
        from mantra_jax.eval import datasets

        sets = {}
        if self.coverage_dir:
            coverage = Path(self.coverage_dir)
            pairs, skipped = datasets.pair_images_and_masks(coverage / "image", self.out / "data" / "coverage_masks_all",
                                                            preset="coverage")
            sets["coverage"] = (pairs, skipped, datasets.list_authentic_images(coverage / "image", preset="coverage"),
                                "coverage")
        if self.casia2_dir:
            casia = Path(self.casia2_dir)
            pairs, skipped = datasets.pair_images_and_masks(casia / "tampered", casia / "mask", preset="casia_v2")
            sets["casia2_dev"] = (pairs, skipped, None, "casia_v2")
        return sets

    def run_dev(self) -> None:
        from mantra_jax.eval.evaluate import EvaluationOptions, run_evaluation

        sets = self.dev_sets()
        for name, path in {**self.models(), BASELINE: None}.items():
            for set_name, (pairs, skipped, authentic, preset) in sets.items():
                out = self.out / "eval" / name / set_name
                if (out / "report.json").exists():
                    continue
                self.log(f"dev {name} on {set_name}: {len(pairs)} images")
                start = time.time()
                run_evaluation(self._predict_fn(name, path), pairs, authentic, out, EvaluationOptions(preset=preset),
                               skipped=skipped, metadata={"model": str(path or name), "set": set_name}, progress=False)
                (out / "seconds.json").write_text(json.dumps({"seconds": time.time() - start}))

    def run_diagnose(self) -> dict:
        from mantra_jax.eval import diagnose

        if not self.coverage_dir:
            return {}
        pairs = self.dev_sets()["coverage"][0]
        regions = diagnose.coverage_regions(Path(self.coverage_dir))
        path = self.out / "diagnose.json"
        result = json.loads(path.read_text()) if path.exists() else {}
        for name in [*self.models(), BASELINE]:
            if name not in result and (self.out / "maps" / name).is_dir():
                result[name] = diagnose.diagnose_maps(diagnose.CachedMaps(None, self.out / "maps" / name), pairs, regions)
                path.write_text(json.dumps(result, indent=1))
        return result

    def run_gates(self) -> dict:
        """`diagnose.anomaly_network_health` of every run with a checkpoint (finished or not: its
        best step) on one fixed validation batch of the trace synthesis: gates.json."""
        from mantra_jax import checkpoint
        from mantra_jax.data import forgery_pipeline
        from mantra_jax.eval import diagnose

        path = self.out / "gates.json"
        result = json.loads(path.read_text()) if path.exists() else {}
        todo = [name for name in RUNS if name not in result and checkpoint.saved_steps(self.out / name)]
        if not todo:
            return result
        batch = forgery_pipeline.make_val_batches(self._index(), seed=self.seed, n_per_type=3, batch_size=12,
                                                  patch_size=128, self_donor_prob=0.5, donor_history_prob=1.0)[0]
        for name in todo:
            cfg, variables, record = checkpoint.load_model_at(self.out / name)
            result[name] = {"step": record["step"], **diagnose.anomaly_network_health(cfg, variables, batch)}
            self.log(f"gates {name}: " + ", ".join(f"{k} {v:.3g}" for k, v in result[name].items()))
            path.write_text(json.dumps(result, indent=1))
        return result

    def run_image_score(self) -> dict:
        """Image-level scores chosen on synthetic images, reported on COVERAGE."""
        from mantra_jax.data import forgeries
        from mantra_jax.eval import datasets

        path = self.out / "image_score.json"
        result = json.loads(path.read_text()) if path.exists() else {}
        patches = self._patches("test")
        synthetic = []
        for i, patch in enumerate(patches):
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0x15C, i]))
            donor = patches[(i + 1) % len(patches)]
            image, _, _ = forgeries.synthesize(None, patch, donor, rng, donor_history_prob=0.5)
            synthetic += [(image, 1), (patch, 0)]
        coverage = []
        if self.coverage_dir:
            pairs, _, authentic, _ = self.dev_sets()["coverage"]
            coverage = [(pair.image, 1) for pair in pairs] + [(a, 0) for a in authentic]
        for name, checkpoint_dir in {**self.models(), BASELINE: None}.items():
            if name in result:
                continue
            maps = self._predict_fn(name, checkpoint_dir)
            synth_auc = _score_aucs(maps, synthetic)
            chosen = max(IMAGE_SCORES, key=lambda s: synth_auc[s])
            result[name] = {"synthetic_auc": synth_auc, "chosen": chosen}
            if coverage:
                result[name]["coverage_auc"] = _score_aucs(lambda p: maps(datasets.read_rgb(p)), coverage)
            self.log(f"image score {name}: chosen {chosen} (synthetic {synth_auc[chosen]:.3f})")
            path.write_text(json.dumps(result, indent=1))
        return result

    def write_results(self) -> Path:
        """trace_results.md: every table of the study from what its parts wrote."""
        from mantra_jax.eval import probe

        def read(path):
            return json.loads(path.read_text()) if path.exists() else {}

        def fmt(v, digits=3):
            return "-" if v is None else f"{v:.{digits}f}"

        lines = ["# The trace study", ""]
        table = read(self.out / "probe.json")
        if table:
            lines += ["## Probe: content-neutral local manipulations of the test patches (pixel AUC)", "",
                      "| features or map | readout | " + " | ".join(probe.OPS) + " | mean |",
                      "|---|---|" + "---|" * (len(probe.OPS) + 1)]
            for name, row in table.items():
                lines.append(f"| {name} | {row.get('readout', '')} | "
                             + " | ".join(fmt(row.get(op)) for op in probe.OPS) + f" | {fmt(row.get('all'))} |")
            lines += ["", f"Shipping choice (fixed rule): {shipping_choice(table)}", ""]
        lines += ["## Runs", "", "| run | what | steps | wall (min) | s / step | best step | synthetic val AUC | F1 |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, (_, what) in RUNS.items():
            rows = [json.loads(line) for line in (self.out / name / "metrics.jsonl").read_text().splitlines()] \
                if (self.out / name / "metrics.jsonl").exists() else []
            if not rows:
                continue
            train = [r for r in rows if r.get("kind") == "train"]
            val = [r for r in rows if r.get("kind") == "val"]
            final = read(self.out / name / "final_metrics.json")
            best = min(val, key=lambda r: r["val_loss"]) if val else {}
            minutes = (rows[-1]["time"] - train[0]["time"]) / 60 if train else None
            steps = train[-1]["step"] if train else 0
            lines.append(f"| {name} | {what}{'' if final else ' (stopped)'} | {steps} | {fmt(minutes, 1)} | "
                         f"{fmt(minutes * 60 / max(steps - 1, 1) if minutes else None, 2)} | {best.get('step', '-')} | "
                         f"{fmt(best.get('auc_overall'))} | {fmt(best.get('f1_overall'))} |")
        sets = ("coverage", "casia2_dev")
        lines += ["", "## Development sets (pixel AUC mean / pooled, F1 at 0.5, best F1; image AUC: mean map)", "",
                  "| model | " + " | ".join(f"{s} AUC | {s} pooled | {s} F1 | {s} best F1" for s in sets)
                  + " | COVERAGE image AUC |", "|---|" + "---|" * (4 * len(sets) + 1)]
        for name in [*self.models(), BASELINE]:
            cells = []
            image = None
            for s in sets:
                r = read(self.out / "eval" / name / s / "report.json")
                cells += [fmt(r.get(k)) for k in ("pixel_auc_mean", "pixel_auc_pooled", "f1_at_0.5_mean", "f1_best_mean")]
                image = image or r.get("image_auc")
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {fmt(image)} |")
        diag = read(self.out / "diagnose.json")
        if diag:
            keys = ("forged_vs_background", "copy_vs_background", "paste_vs_background", "forged_vs_copy",
                    "forged_vs_paste")
            lines += ["", "## What the COVERAGE maps follow (mean AUC over images)", "",
                      "| model | pasted | source | genuine look-alike | pasted vs source | pasted vs look-alike | texture |",
                      "|---|---|---|---|---|---|---|"]
            for name, row in diag.items():
                lines.append(f"| {name} | " + " | ".join(fmt(row.get(f"{k}_auc_mean")) for k in keys)
                             + f" | {fmt(row.get('texture_auc_mean'))} |")
        gates = read(self.out / "gates.json")
        if gates:
            lines += ["", "## Does the anomaly network still learn? (one validation batch, each run's best step)", "",
                      "| run | step | logit std | anomaly feature mean | gate inputs beyond +-2.5 | "
                      "gradient: ConvLSTM | gradient: output layer |", "|---|---|---|---|---|---|---|"]
            for name, row in gates.items():
                lines.append(f"| {name} | {row['step']} | {fmt(row['logit_std'])} | {fmt(row['anomaly_feature_mean'])} | "
                             f"{fmt(row['gate_inputs_beyond_2_5'])} | {row['grad_norm_convlstm']:.3g} | "
                             f"{row['grad_norm_output']:.3g} |")
        scores = read(self.out / "image_score.json")
        if scores:
            lines += ["", "## Image-level scores: AUC on synthetic images (choice) and on COVERAGE", "",
                      "| model | chosen | " + " | ".join(f"{s} synth / COVERAGE" for s in IMAGE_SCORES) + " |",
                      "|---|---|" + "---|" * len(IMAGE_SCORES)]
            for name, row in scores.items():
                cov = row.get("coverage_auc", {})
                lines.append(f"| {name} | {row['chosen']} | " + " | ".join(
                    f"{fmt(row['synthetic_auc'].get(s))} / {fmt(cov.get(s))}" for s in IMAGE_SCORES) + " |")
        path = self.out / "trace_results.md"
        path.write_text("\n".join(lines) + "\n")
        return path

    def run_package(self, destination: Path) -> str | None:
        """Ships the model of `shipping_choice` as `destination` (checkpoint.package_model: its best
        step, batch statistics, flags.txt) with its expected outputs; the card is written by hand."""
        from mantra_jax import checkpoint
        from mantra_jax.eval import reference

        name = shipping_choice(json.loads((self.out / "probe.json").read_text())) \
            if (self.out / "probe.json").exists() else None
        if name is None or name not in RUNS:
            self.log(f"package: the choice is {name}, not a run of this study; nothing shipped")
            return name
        record = checkpoint.package_model(self.out / name, destination, {"chosen_by": "trace study shipping_choice"})
        cfg, variables = checkpoint.load_model(destination)
        (Path(destination) / "expected_outputs.json").write_text(json.dumps(reference.outputs(cfg, variables), indent=1))
        self.log(f"package: {name} step {record['step']} -> {destination}")
        return name

    def run(self, parts) -> None:
        self.prepare()
        if "probe" in parts:
            self.run_probe()
        if "train" in parts:
            for name in RUNS:
                self.run_training(name)
        if "probe" in parts:
            self.run_probe()  # the finished runs' rows
        if "dev" in parts:
            self.run_dev()
        if "diagnose" in parts:
            self.run_diagnose()
        if "gates" in parts:
            self.run_gates()
        if "image_score" in parts:
            self.run_image_score()
        if "package" in parts:
            self.run_package(self.package_dir)
        self.write_results()


def _score_aucs(score_map: Callable, items) -> dict[str, float]:
    """AUC of every IMAGE_SCORES score of the maps of `items` ((input of score_map, label) pairs)."""
    from mantra_jax.metrics import pixel

    scores = {s: [] for s in IMAGE_SCORES}
    for item, _ in items:
        prob = score_map(item)
        for s in IMAGE_SCORES:
            scores[s].append(image_score(prob, s))
    labels = [label for _, label in items]
    return {s: pixel.roc_auc(scores[s], labels) for s in IMAGE_SCORES}


def shipping_choice(probe_table: dict) -> str | None:
    """The model to ship: the highest mean AUC of a model's own map on the probe's synthetic,
    content-neutral local manipulations (never a development-set figure)."""
    rows = {k[len("map of "):]: v["all"] for k, v in probe_table.items() if k.startswith("map of ")}
    return max(rows, key=rows.get) if rows else None


def image_score(prob_HxW: np.ndarray, kind: str) -> float:
    """An image-level score of a forgery map: "mean" (the paper's), "max", "p99_blur" (the 99th
    percentile of the map averaged over 15 x 15 windows: a large region must be confident, not
    one pixel) or "top1pct_mean" (the mean of the highest 1 % of pixels)."""
    import cv2

    prob = np.asarray(prob_HxW, np.float32)
    if kind == "mean":
        return float(prob.mean())
    if kind == "max":
        return float(prob.max())
    if kind == "p99_blur":
        return float(np.percentile(cv2.blur(prob, (15, 15)), 99))
    if kind == "top1pct_mean":
        flat = np.sort(prob.ravel())
        return float(flat[-max(1, flat.size // 100):].mean())
    raise ValueError(f"unknown image score {kind!r}; expected one of {IMAGE_SCORES}")
