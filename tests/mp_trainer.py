"""Helper for tests/test_multiprocess.py (not collected): the IMC trainer in one of two modes.

  python -m tests.mp_trainer PHOTOS WORKDIR process COORD NPROC PID   one process of a multi-process run
  python -m tests.mp_trainer PHOTOS WORKDIR emulate NSHARDS            one process consuming the same
                                                                      global batches (all shards at once)
"""
import sys

import grain
import numpy as np


def main():
    photos_dir, workdir, mode = sys.argv[1:4]
    from mantra_jax.train import distributed

    if mode == "process":
        coord, nproc, pid = sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
        distributed.initialize(coordinator_address=coord, num_processes=nproc, process_id=pid)
    from mantra_jax.data import photos
    from mantra_jax.imc import taxonomy
    from mantra_jax.nn import config
    from mantra_jax.train import imc, loop

    index = photos.build_patch_index(photos_dir, use_cache=False)
    model_cfg = config.make_config(width_scale=0.0625, backbone="baseline", head="imc", num_classes=taxonomy.num_classes(0))
    task = imc.make_task(model_cfg, level=0, patch_index=index, learning_rate=1e-3, val_samples=8, val_batch_size=4, crop=16)
    if mode == "emulate":
        shards = int(sys.argv[4])
        base = task.train_dataset

        class AllShards(grain.DatasetIterator):
            """The global batch of a `shards`-process run: every shard's batch, in process order."""

            def __init__(self, parents):
                super().__init__(parents)

            def __next__(self):
                parts = [next(p) for p in self._parents]
                return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

            def get_state(self):
                return {"shards": [p.get_state() for p in self._parents]}

            def set_state(self, state):
                for p, s in zip(self._parents, state["shards"]):
                    p.set_state(s)

        def all_shards(seed, shard_index, shard_count, batch_size):
            per = batch_size // shards
            return AllShards([iter(base(seed, i, shards, per)) for i in range(shards)])

        task.train_dataset = all_shards
    cfg = loop.LoopConfig(workdir=workdir, seed=1, batch_size=4, epochs=1, steps_per_epoch=3, checkpoint_every=3,
                          log_every=1, async_checkpoint=False)
    loop.train(task, cfg)


if __name__ == "__main__":
    main()
