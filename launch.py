"""Trains a GPT: `python launch.py --config=configs/NAME.py [--config.KEY=VALUE ...]`.

Multi-host: SLURM and Open MPI jobs are joined automatically; elsewhere pass
--coordinator_address, --num_processes and --process_id to every process.
"""

import logging as pylogging
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from jaxgpt import sharding, train
from jaxgpt.errors import UserError


def _define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "Run recipe: a configs/*.py file.",
                                  lock_config=True)
  flags.DEFINE_string("coordinator_address", "", "host:port of process 0, for a multi-host run")
  flags.DEFINE_integer("num_processes", 0, "processes in a multi-host run")
  flags.DEFINE_integer("process_id", -1, "this process's index in a multi-host run")
  flags.mark_flags_as_required(["config"])


def _quiet_orbax(record: pylogging.LogRecord) -> bool:
  """Orbax narrates every save at INFO through absl: keep its warnings and errors, as one line.

  A failed save is reported by the run itself, with what to do.
  """
  if "/orbax/" not in record.pathname:
    return True
  record.exc_info, record.exc_text = None, None
  return record.levelno >= pylogging.WARNING


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  sharding.maybe_initialize_distributed(f.coordinator_address, f.num_processes, f.process_id)
  # One process speaks for the run; the others report only warnings and errors.
  logging.set_verbosity(logging.INFO if jax.process_index() == 0 else logging.WARNING)
  logging.get_absl_handler().addFilter(_quiet_orbax)
  try:
    train.train(f.config)
  except UserError as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
