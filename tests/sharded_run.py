"""Runs `train.train` on simulated devices or as one of several processes; prints JSON.

Used by test_sharding.py in subprocesses, because the device count and the
distributed runtime must be set before jax starts:

  python tests/sharded_run.py --devices=8 --out=DIR --data=DIR --overrides='{"sharding": "fsdp"}'
  python tests/sharded_run.py --process_id=0 --num_processes=2 --coordinator=localhost:PORT ...
  python tests/sharded_run.py ... --full_disk_from_iter=5  # metrics writes fail from iter 5
  python tests/sharded_run.py ... --cwd=DIR --data=data  # a host's own copy of the data
"""

import argparse
import errno
import json
import os
import pathlib
import sys

parser = argparse.ArgumentParser()
parser.add_argument("--devices", type=int, default=1)
parser.add_argument("--process_id", type=int, default=-1)
parser.add_argument("--num_processes", type=int, default=0)
parser.add_argument("--coordinator", default="")
parser.add_argument("--out", required=True)
parser.add_argument("--data", required=True)
parser.add_argument("--overrides", default="{}")
parser.add_argument("--cwd", default="", help="the directory a relative --data is in")
parser.add_argument("--full_disk_from_iter", type=int, default=-1,
                    help="metrics.jsonl writes fail from this iteration, as on a full disk")
args = parser.parse_args()
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
from absl import flags
from conftest import tiny_config

from jaxgpt import sharding, sinks, train

flags.FLAGS.mark_as_parsed()
if args.full_disk_from_iter >= 0:
  write_metrics = sinks.MetricsWriter.write

  def write_until_full(self, record):
    if record["iter"] >= args.full_disk_from_iter:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    write_metrics(self, record)

  sinks.MetricsWriter.write = write_until_full
sharding.maybe_initialize_distributed(args.coordinator, args.num_processes, args.process_id)
if args.cwd:
  os.chdir(args.cwd)
config = tiny_config(pathlib.Path(args.out), args.data, **json.loads(args.overrides))
held = {}  # the loop's own params at the end of training (not after a stop)
losses = train.train(config, hooks=train.Hooks(at_end=lambda params: held.update(params)))
wte = held["wte"]["embedding"] if held else None
print(json.dumps({
    "process": jax.process_index(),
    "devices": jax.device_count(),
    "losses": losses,
    "wte_shape": None if wte is None else list(wte.shape),
    "wte_shard_shape": None if wte is None else list(wte.addressable_shards[0].data.shape),
}))
