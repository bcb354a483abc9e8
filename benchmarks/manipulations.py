"""Prints the cost of every IMC manipulation leaf on one 256x256 patch, on one core.

Usage: python benchmarks/manipulations.py [--size 256] [--repeats 7]

Each leaf's cost is the median over repeats (robust to a shared machine) of one call of
`manipulations.apply` on a real photo (scikit-image's astronaut, resized). The mean under uniform
leaf sampling is the mean of the per-leaf costs. Target: mean <= 4 ms, every leaf <= 40 ms.
The last line reads `mean_ms=<float> max_ms=<float> leaves=<int>`.
"""

import os

# One core: keep every library single-threaded before it is imported.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import collections
import pathlib
import sys
import time

import cv2
import numpy as np
from skimage import data

try:
    import mantra_jax  # noqa: F401
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from mantra_jax.imc import manipulations

MEAN_TARGET_MS = 4.0
MAX_TARGET_MS = 40.0


def leaf_costs_ms(image: np.ndarray, repeats: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    costs = np.empty(manipulations.NUM_LEAVES)
    for leaf in range(manipulations.NUM_LEAVES):
        manipulations.apply(leaf, image, rng)  # warm-up (codec and allocator set-up)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            manipulations.apply(leaf, image, rng)
            times.append(time.perf_counter() - start)
        costs[leaf] = 1e3 * float(np.median(times))
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="patch side in pixels")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per leaf")
    args = parser.parse_args()

    cv2.setNumThreads(1)
    image = cv2.resize(data.astronaut(), (args.size, args.size), interpolation=cv2.INTER_AREA)
    costs = leaf_costs_ms(image, args.repeats)

    print(f"# cost per leaf, {args.size}x{args.size} patch, one core, median of {args.repeats} calls")
    for manipulation, cost in zip(manipulations.REGISTRY, costs):
        flag = "  OVER TARGET" if cost > MAX_TARGET_MS else ""
        print(f"{manipulation.leaf:4d} {manipulation.label:32s} {cost:8.3f} ms{flag}")

    by_type = collections.defaultdict(list)
    for manipulation, cost in zip(manipulations.REGISTRY, costs):
        by_type[manipulation.type].append(cost)
    print("# per type: leaves, mean ms, max ms, share of the uniform-sampling mean")
    total = costs.sum()
    for type_name, type_costs in sorted(by_type.items(), key=lambda item: -sum(item[1])):
        print(
            f"{type_name:20s} {len(type_costs):3d} {np.mean(type_costs):8.3f} {np.max(type_costs):8.3f}"
            f" {100 * sum(type_costs) / total:5.1f}%"
        )
    slowest = np.argsort(costs)[::-1][:5]
    print("# slowest: " + ", ".join(f"{manipulations.REGISTRY[i].label} {costs[i]:.2f} ms" for i in slowest))
    print(f"# targets: mean <= {MEAN_TARGET_MS} ms, max <= {MAX_TARGET_MS} ms")
    print(f"mean_ms={costs.mean():.3f} max_ms={costs.max():.3f} leaves={len(costs)}")


if __name__ == "__main__":
    main()
