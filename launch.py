"""Trains a GPT: `python launch.py --config=configs/NAME.py [--config.KEY=VALUE ...]`."""

from absl import app, flags, logging
from ml_collections import config_flags

from jaxgpt import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Run recipe: a configs/*.py file.",
                                          lock_config=True)
flags.mark_flags_as_required(["config"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.INFO)
  train.train(_CONFIG.value)


if __name__ == "__main__":
  app.run(main)
