"""Trains a GPT: `python launch.py --config=configs/NAME.py [--config.KEY=VALUE ...]`.

Multi-host: SLURM and Open MPI jobs are joined automatically; elsewhere pass
--coordinator_address, --num_processes and --process_id to every process.
"""

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from jaxgpt import cli, sharding, train


def _define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "Run recipe: a configs/*.py file.",
                                  lock_config=True)
  flags.DEFINE_string("coordinator_address", "", "host:port of process 0, for a multi-host run")
  flags.DEFINE_integer("num_processes", 0, "processes in a multi-host run")
  flags.DEFINE_integer("process_id", -1, "this process's index in a multi-host run")
  flags.mark_flags_as_required(["config"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  sharding.maybe_initialize_distributed(f.coordinator_address, f.num_processes, f.process_id)
  # One process speaks for the run; the others report only warnings and errors.
  if jax.process_index() > 0:
    logging.set_verbosity(logging.WARNING)
  elif logging.get_verbosity() < logging.INFO:
    logging.set_verbosity(logging.INFO)
  train.train(f.config)


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
