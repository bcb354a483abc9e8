"""Where a train step's time goes: the pieces of the released network timed one by one.

    python -m benchmarks.pieces [--batch 4] [--size 128x128] [--pieces featex,head,ladn,optimizer,layers]
                                [--precision float32] [--repeats 3] [--width_scale 1.0] [--json PATH]

Each piece is the project's own function, jitted alone on random inputs of the shapes the step
gives it (median of `--repeats` calls after one warm-up, on the default JAX device):
  featex     Featex forward (`featex.apply`), and forward + backward (the gradient of every Featex
             parameter and of the input, for a random cotangent of the features)
  head       the pooled IMC head (`featex.imc_head_pooled`) with the cross-entropy, forward + backward
  ladn       the LADN (`ladn.apply`, training mode) with the pixel BCE, forward + backward
  optimizer  clipping, Adam and the projection over the IMC parameters (`loop.training_optimizer`,
             `model.project`): what the step adds after the gradient
  layers     every Featex convolution alone (`layers.symmetric_conv`), forward and forward + backward
The sum of the pieces is not exactly a step (XLA fuses across them) but says which part to work on.
Prints one line per piece and, with --json, writes them all.
"""
from __future__ import annotations

import argparse
import json
import time

from benchmarks import harness

PIECES = ("featex", "head", "ladn", "optimizer", "layers")


def _timed(fn, *args, repeats: int) -> dict:
    import jax

    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    times = harness.time_calls(lambda: jax.block_until_ready(compiled(*args)), repeats, warmup=1)
    return {"median_s": harness.median(times), "times_s": times, "compile_s": compile_s,
            "flops": harness.flops(compiled)}


def measure(batch: int, height: int, width: int, pieces, precision: str, repeats: int,
            width_scale: float) -> list[dict]:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from mantra_jax.imc import taxonomy
    from mantra_jax.nn import config, featex, ladn, layers, model
    from mantra_jax.train import imc, loop

    dtype = config.dtype(precision)
    rng = np.random.default_rng(0)
    e2e_cfg = config.make_config(width_scale=width_scale)
    imc_cfg = e2e_cfg.replace(head="imc", num_classes=taxonomy.num_classes(taxonomy.LEAF_LEVEL))
    e2e_vars, imc_vars = harness.benchmark_variables(e2e_cfg), harness.benchmark_variables(imc_cfg)
    x = jnp.asarray(rng.uniform(-1, 1, (batch, height, width, 3)), jnp.float32)
    feat = jnp.asarray(rng.standard_normal((batch, height, width, e2e_cfg.feature_dim)) / 16, dtype)
    rows = []

    def row(name, fn, *args):
        r = {"piece": name, **_timed(fn, *args, repeats=repeats)}
        rows.append(r)
        gflop = "-" if r["flops"] is None else f"{r['flops'] / 1e9:.1f}"
        print(f"{name:34s} {r['median_s'] * 1e3:10.1f} ms  {gflop:>8s} GFLOP  compile {r['compile_s']:.1f} s",
              flush=True)

    featex_params = e2e_vars["params"]["Featex"]
    if "featex" in pieces:
        forward = lambda p, x: featex.apply(p, x.astype(dtype), e2e_cfg)
        ct = jnp.asarray(rng.standard_normal(feat.shape), dtype)
        row("featex forward", forward, featex_params, x)
        row("featex forward+backward",  # (the cotangent an argument: a constant would be folded in)
            lambda p, x, ct: jax.vjp(forward, p, x)[1](ct), featex_params, x, ct)
    if "head" in pieces:
        labels = jnp.asarray(rng.integers(0, imc_cfg.num_classes, batch), jnp.int32)
        head_loss = lambda p, f: imc.cross_entropy(featex.imc_head_pooled(p, f), labels)
        row("imc head (pooled) forward+backward", jax.grad(head_loss, argnums=(0, 1)),
            imc_vars["params"]["imc"], feat)
    if "ladn" in pieces:
        target = jnp.asarray(rng.random((batch, height, width)) < 0.3, jnp.float32)

        def ladn_loss(p, f):
            logits, _ = ladn.apply(p, e2e_vars["batch_stats"], f, e2e_cfg, train=True)
            return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, target))

        ladn_params = {k: v for k, v in e2e_vars["params"].items() if k != "Featex"}
        row("ladn forward+backward", jax.grad(ladn_loss, argnums=(0, 1)), ladn_params, feat)
    if "optimizer" in pieces:
        task = imc.make_task(imc_cfg, level=taxonomy.LEAF_LEVEL, patch_index=None, learning_rate=1e-4)
        optimizer = loop.training_optimizer(task, loop.LoopConfig.grad_clip_norm)
        params = imc_vars["params"]
        opt_state = optimizer.init(params)
        grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), params)

        def update(params, opt_state, grads):
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return model.project(optax.apply_updates(params, updates), imc_cfg), opt_state

        row("optimizer (clip, adam, project)", update, params, opt_state, grads)
    if "layers" in pieces:
        act = jnp.asarray(rng.uniform(-1, 1, (batch, height, width, 3)), dtype)
        kernels = [("b1c1", featex.first_layer_kernel(featex_params, e2e_cfg), None, "relu")]
        kernels += [(name, featex_params[name]["kernel"], featex_params[name]["bias"],
                     e2e_cfg.transform_activation if name == "transform" else "relu")
                    for name, _, _ in featex.layer_names(e2e_cfg)]
        seen = {}
        for name, kernel, bias, activation in kernels:
            c_in, c_out = kernel.shape[2:]
            x_in = act if c_in == 3 else jnp.asarray(rng.uniform(0, 1, (batch, height, width, c_in)), dtype)
            key = (kernel.shape, activation)
            if key in seen:  # the same shapes as an earlier layer: the same program
                print(f"{name:34s} as {seen[key]}")
                continue
            seen[key] = name
            fwd = lambda x, k, b, a=activation: layers.symmetric_conv(x, k.astype(dtype), b, a)
            ct = jnp.asarray(rng.standard_normal((batch, height, width, c_out)), dtype)
            b = bias if bias is not None else jnp.zeros((c_out,))
            row(f"{name} {kernel.shape[0]}x{kernel.shape[0]} {c_in}->{c_out} forward", fwd, x_in, kernel, b)
            row(f"{name} {kernel.shape[0]}x{kernel.shape[0]} {c_in}->{c_out} forward+backward",
                lambda x, k, b, ct, f=fwd: jax.vjp(f, x, k, b)[1](ct), x_in, kernel, b, ct)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", default="128x128", help="HxW")
    parser.add_argument("--pieces", default=",".join(PIECES))
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width_scale", type=float, default=1.0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    height, width = (int(v) for v in args.size.lower().split("x"))
    pieces = [p for p in args.pieces.split(",") if p]
    unknown = set(pieces) - set(PIECES)
    if unknown:
        parser.error(f"unknown pieces {sorted(unknown)}; expected some of {PIECES}")
    import jax

    print(f"pieces on {jax.devices()[0].platform}, jax {jax.__version__}: batch {args.batch} x {height} x {width}, "
          f"{args.precision}, width x{args.width_scale}", flush=True)
    rows = measure(args.batch, height, width, pieces, args.precision, args.repeats, args.width_scale)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"jax": jax.__version__, "batch": args.batch, "size": [height, width],
                       "precision": args.precision, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
