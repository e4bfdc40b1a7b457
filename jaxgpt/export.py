"""Writes a run's checkpoint as a Hugging Face GPT-2 that transformers loads.

  python -m jaxgpt.export --out_dir=runs/x --to=hf_dir [--step=N]
  # then: transformers.GPT2LMHeadModel.from_pretrained("hf_dir"),
  #       transformers.AutoTokenizer.from_pretrained("hf_dir")
"""

from __future__ import annotations

from absl import app, flags

from jaxgpt import cli, hf, run_dir


def export(out_dir: str, to_dir: str, step: int | None = None) -> int:
  """Writes the latest (or the given) checkpoint of `out_dir` to `to_dir`; returns its step."""
  config, params, step = run_dir.RunDir(out_dir).restore_params(step)
  hf.export(params, config, to_dir)
  return step


def _define_flags() -> None:
  flags.DEFINE_string("out_dir", "out", "Run directory whose checkpoint to export.")
  flags.DEFINE_string("to", None, "New directory for config.json and model.safetensors.")
  flags.DEFINE_integer("step", None, "Checkpoint step to export; default the latest.")
  flags.mark_flags_as_required(["to"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  step = export(f.out_dir, f.to, f.step)
  print(f"wrote {f.out_dir} step {step} to {f.to} (config.json, model.safetensors and GPT-2's "
        "tokenizer files)")


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
