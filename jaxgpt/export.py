"""Writes a run's checkpoint as a Hugging Face GPT-2 that transformers loads.

  python -m jaxgpt.export --out_dir=runs/x --out=hf_dir [--step=N]
  # then: transformers.GPT2LMHeadModel.from_pretrained("hf_dir"),
  #       transformers.AutoTokenizer.from_pretrained("hf_dir")
"""

from __future__ import annotations

from absl import flags

from jaxgpt import cli, model, run_dir
from jaxgpt.interop import gpt2, weights
from jaxgpt.model import GPTConfig


def _define_flags() -> None:
  weights.define_run_flags()
  cli.define_path("out", None, "New directory for config.json, model.safetensors and the "
                  "tokenizer files.")
  flags.mark_flags_as_required(["out"])


def main() -> None:
  f = flags.FLAGS
  gpt2.check_new_dir(f.out)  # before a large checkpoint is read
  weights.check_run_path(f.out_dir)  # not the working directory's config.json
  # Before a large train state is read: config.json has every checkpoint's architecture
  # (a resume refuses to change it).
  saved = run_dir.RunDir(f.out_dir).read_config() or {}
  gpt2.check_exportable(GPTConfig(**{k: saved[k] for k in model.ARCHITECTURE if k in saved}))
  config, params, step = weights.from_run(f.out_dir, f.step)
  with cli.sigterm_stops(f"nothing was left in {f.out}"):
    with_tokenizer = gpt2.export(params, GPTConfig.from_config(config), f.out)
  print(f"wrote {f.out_dir} step {step} to {f.out} (config.json, model.safetensors and " +
        ("GPT-2's tokenizer files)" if with_tokenizer else "no tokenizer: the model's "
         "vocabulary is not GPT-2's)"))


if __name__ == "__main__":
  _define_flags()
  cli.run(main, beside_training=True)
