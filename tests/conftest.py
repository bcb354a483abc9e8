"""Test set-up: two fake CPU devices (sharding tests), and absl flags marked parsed for grain."""
import os

# Must happen before JAX initialises its backends: every test process sees 2 CPU devices.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The commands run by the tests leave the user's persistent compilation cache alone.
os.environ.setdefault("MANTRA_JAX_COMPILATION_CACHE", "")

from absl import flags  # noqa: E402

if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
