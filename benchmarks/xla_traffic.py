"""What XLA's GPU compiler makes of ManTra-Net, without a GPU: kernels, memory traffic, precision.

    # in an environment of its own: the requirements plus the CUDA plugin of their jax version
    pip install -r requirements.txt "jax[cuda12]==<that jax version, e.g. 0.10.2>"
    python -m benchmarks.xla_traffic --target_config h100_sxm.txtpb [--rows ROW,...]
                                     [--dtypes float32,bfloat16] [--dump DIR] [--json PATH]

Compiles the full-size programs of benchmarks/accelerator.py ahead of time for the GPU that the
target config describes (XLA's GpuTargetConfigProto as text, e.g. the h100_sxm.txtpb of XLA's
`xla/backends/gpu/target_config/specs`; delete any field the installed jaxlib rejects, the error
names it), with no device present: JAX_PLATFORMS=cpu keeps JAX off CUDA and
JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 skips the plugin's driver check (both set here). No autotuning
runs, so cuDNN algorithms and Triton tiles are defaults; fusion, layouts, precision and buffer
assignment are XLA's real decisions.

Rows: imc_train, e2e_train (the trainer's own step: `loop.make_train_step` of the task that
accelerator.py builds), infer (the whole-image pass of a 1024 x 768 image), tile1 and tile2 (one
crop of each pass of tiled inference of a 4000 x 3000 image at 512-pixel tiles). Per row and dtype
it prints the kernels launched, a memory-traffic model (each top-level kernel reads its operands
and writes its result once; a fused slice reads only its slice; an in-place dynamic-update-slice
fusion moves only its update), the largest kernel categories by traffic, convolutions by dtype,
gathers and scatters, and XLA's temporaries. Not a timing: a way to see what would cost bandwidth
on the accelerator, and to compare a change before and after. `--dump DIR` keeps XLA's
dumps (optimized HLO, buffer assignment) for reading.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys

ROWS = ("imc_train", "e2e_train", "infer", "tile1", "tile2")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "f64": 8}
_SHAPE = re.compile(r"\b(pred|s8|u8|bf16|f16|s32|u32|f32|s64|f64)\[([\d,]*)\]")
_INSTRUCTION = re.compile(r"(\(.*?\)|\S+)\s+([\w\-$]+)\((.*?)\)(?:,|$)")
_FREE = {"parameter", "get-tuple-element", "constant", "tuple", "bitcast"}


def shape_bytes(text: str) -> int:
    """Bytes of every array shape written in `text` (a tuple's elements summed)."""
    total = 0
    for dtype, dims in _SHAPE.findall(text):
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        total += n * _BYTES[dtype]
    return total


def _computations(hlo_text: str) -> dict[str, list[str]]:
    """Instruction lines of every computation, by name."""
    computations, name = {}, None
    for line in hlo_text.splitlines():
        header = re.match(r"(?:ENTRY\s+)?%([\w.\-]+)\s.*\{\s*$", line)
        if header:
            name = header.group(1)
            computations[name] = []
        elif name and line.strip() == "}":
            name = None
        elif name:
            computations[name].append(line.strip())
    return computations


def _parse(line: str):
    """(name, result type, op, operand names) of an instruction line, or None."""
    if " = " not in line:
        return None
    name, rhs = line.split(" = ", 1)
    match = _INSTRUCTION.match(rhs)
    if not match:
        return None
    result, op, args = match.groups()
    args = re.sub(r"/\*index=\d+\*/", "", args)  # XLA numbers every fifth operand in a comment
    operands = [a.strip() for a in args.split(",") if a.strip().startswith("%")]
    return name.replace("ROOT ", "").strip(), result, op, operands


def _parameter_reads(lines: list[str]) -> dict[int, int]:
    """Bytes a fused computation reads of each parameter it only slices (the slices' sizes)."""
    parsed = [p for p in map(_parse, lines) if p]
    params = {}
    for line in lines:  # "%param_0.9 = f32[...] parameter(0)"
        match = re.match(r"(?:ROOT )?(%\S+) = .* parameter\((\d+)\)", line)
        if match:
            params[match.group(1)] = int(match.group(2))
    reads = {}
    for param, index in params.items():
        users = [(result, op, operands) for _, result, op, operands in parsed if param in operands]
        if users and all(op in ("slice", "dynamic-slice") and operands[0] == param for _, op, operands in users):
            reads[index] = sum(shape_bytes(result) for result, _, _ in users)
    return reads


def traffic(hlo_text: str) -> dict:
    """The traffic model of an optimized HLO module's entry computation (see the docstring)."""
    computations = _computations(hlo_text)
    entry = hlo_text[hlo_text.index("\nENTRY") :]
    entry_name = re.match(r"\nENTRY\s+%([\w.\-]+)", entry).group(1)
    sizes: dict[str, int] = {}
    by_kind, count = collections.Counter(), collections.Counter()
    conv_dtypes = collections.Counter()
    for line in computations[entry_name]:
        parsed = _parse(line)
        if not parsed:
            continue
        name, result, op, operands = parsed
        name = "%" + name.lstrip("%")
        sizes[name] = shape_bytes(result)
        if op in _FREE:
            continue
        reads = [sizes.get(a, 0) for a in operands]
        kind = op
        if op == "fusion":
            called = re.search(r"calls=%?([\w.\-]+)", line).group(1)
            for index, sliced in _parameter_reads(computations.get(called, [])).items():
                if index < len(reads):
                    reads[index] = min(reads[index], sliced)
            kind = "fusion " + re.sub(r"[._]?\d+$", "", called)
        if op == "fusion" and "dynamic_update_slice" in line:
            kind, moved = "in-place update", 2 * sum(reads[1:])
        else:
            moved = sizes[name] + sum(reads)
            if op == "custom-call":
                kind = re.search(r'custom_call_target="([^"]+)"', line).group(1)
                if "conv" in kind:
                    conv_dtypes[_SHAPE.search(result).group(1)] += 1
        by_kind[kind] += moved
        count[kind] += 1
    return {
        "kernels": sum(count.values()),
        "bytes": sum(by_kind.values()),
        "by_kind": {k: {"bytes": v, "count": count[k]} for k, v in by_kind.most_common()},
        "convolutions_by_dtype": dict(conv_dtypes),
        "gathers": len(re.findall(r"\sgather\(", hlo_text)),
        "scatters": len(re.findall(r"\sscatter\(", hlo_text)),
    }


def _programs(row: str, dtype, device):
    """(function, abstract arguments, donated argument numbers) of a row, every argument placed on
    the target device."""
    import jax
    import jax.numpy as jnp

    from benchmarks import accelerator
    from mantra_jax.nn import model, tiled
    from mantra_jax.train import loop

    sharding = jax.sharding.SingleDeviceSharding(device)

    def abstract(tree):
        return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), tree)

    if row in ("imc_train", "e2e_train"):  # the trainer's own step, as accelerator.py times it
        spec = accelerator.row_specs()[row]
        task, step = accelerator.train_step(spec, "full", dtype)
        variables = jax.eval_shape(lambda: model.init(jax.random.key(0), task.model_cfg))
        state = jax.eval_shape(lambda v: loop.initial_state(task, v, loop.LoopConfig.grad_clip_norm), variables)
        batch = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                                       accelerator.train_batch(spec, task.model_cfg.num_classes))
        lr_scale = jax.ShapeDtypeStruct((), jnp.float32)
        return step, (abstract(state), abstract(batch), abstract(lr_scale)), (0,)

    cfg = accelerator.model_config("infer")
    variables = abstract(jax.eval_shape(lambda: model.init(jax.random.key(0), cfg)))
    if row == "infer":
        image = abstract(jax.ShapeDtypeStruct((768, 1024, 3), jnp.uint8))
        return (lambda v, rgb: tiled.whole_image_map(v, rgb, cfg, dtype)), (variables, image), ()
    height, width = 3000, 4000
    image = abstract(jax.ShapeDtypeStruct((height, width, 3), jnp.uint8))
    stored = abstract(jax.ShapeDtypeStruct((height, width, cfg.adapt_dim), jnp.float32))
    pair = abstract(jax.ShapeDtypeStruct((2,), jnp.int32))
    halo_featex, halo_ladn = tiled.halos(cfg)
    if row == "tile1":
        size = (tiled.DEFAULT_TILE + 2 * halo_featex,) * 2
        interior = abstract(jax.ShapeDtypeStruct((4,), jnp.int32))
        return (lambda v, rgb, s, start, inner: tiled.pass1_tile(v, rgb, s, start, inner, cfg=cfg, dtype=dtype,
                                                                  size=size)), (variables, image, stored, pair, interior), (2,)
    size = (tiled.DEFAULT_TILE + 2 * halo_ladn,) * 2
    moments = abstract(jax.ShapeDtypeStruct((cfg.adapt_dim,), jnp.float32))
    return (lambda v, rgb, s, start, mean, std: tiled.pass2_tile(
        v, rgb, s, start, start, mean, std, cfg=cfg, dtype=dtype, size=size, feature_size=size)), (
        variables, image, stored, pair, moments, moments), ()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target_config", required=True, help="a GpuTargetConfigProto text file")
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--dump", default=None, help="keep XLA's dumps in this folder")
    parser.add_argument("--json", default=None, help="write every figure here")
    args = parser.parse_args(argv)
    rows = [r for r in args.rows.split(",") if r]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    try:
        target = open(args.target_config).read()
    except OSError as err:
        parser.error(f"cannot read the target config {args.target_config}: {err}")

    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
    if args.dump:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={args.dump}").strip()
    import jax
    import jax.numpy as jnp
    from jax.experimental import topologies

    try:
        topology = topologies.get_topology_desc(platform="cuda", topology_name="target", target_config=target,
                                                topology="1x1x1")
    except Exception as err:  # noqa: BLE001 - the plugin's errors are of several types
        sys.exit(f"cannot make a GPU topology from {args.target_config} (is jax[cuda12] installed, and does "
                 f"the installed jaxlib know every field of the file?): {err}")
    device = topology.devices[0]
    print(f"compiling for {device.device_kind} with jax {jax.__version__}, no device present")
    results = []
    for row in rows:
        for dtype_name in args.dtypes.split(","):
            function, arguments, donated = _programs(row, jnp.dtype(dtype_name), device)
            compiled = jax.jit(function, donate_argnums=donated).trace(*arguments).lower().compile()
            figures = traffic(compiled.as_text())
            memory = compiled.memory_analysis()
            figures.update(row=row, dtype=dtype_name, temp_bytes=getattr(memory, "temp_size_in_bytes", None))
            results.append(figures)
            convs = ", ".join(f"{n} {d}" for d, n in sorted(figures["convolutions_by_dtype"].items()))
            print(f"\n{row} {dtype_name}: {figures['kernels']} kernels, {figures['bytes'] / 1e9:.2f} GB moved, "
                  f"temporaries {figures['temp_bytes'] / 1e9:.2f} GB; convolutions: {convs}; "
                  f"gathers {figures['gathers']}, scatters {figures['scatters']}")
            for kind, entry in list(figures["by_kind"].items())[:8]:
                print(f"  {entry['bytes'] / 1e9:8.3f} GB  {entry['count']:4d} x {kind}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device.device_kind, "jax": jax.__version__, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
