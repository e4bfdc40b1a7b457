"""Writes a run's checkpoint as a Hugging Face GPT-2 that transformers loads.

  python -m jaxgpt.export --out_dir=runs/x --to=hf_dir [--step=N]
  # then: transformers.GPT2LMHeadModel.from_pretrained("hf_dir")
"""

from __future__ import annotations

from absl import app, flags

from jaxgpt import hf
from jaxgpt.train import restore_params

_OUT_DIR = flags.DEFINE_string("out_dir", "out", "Run directory whose checkpoint to export.")
_TO = flags.DEFINE_string("to", None, "New directory for config.json and model.safetensors.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to export; default the latest.")
flags.mark_flags_as_required(["to"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  config, params, step = restore_params(_OUT_DIR.value, _STEP.value)
  try:
    hf.export(params, config, _TO.value)
  except ValueError as e:
    raise ValueError(f"{_OUT_DIR.value} step {step}: {e}") from None
  print(f"wrote {_OUT_DIR.value} step {step} to {_TO.value} (config.json, model.safetensors)")


if __name__ == "__main__":
  app.run(main)
