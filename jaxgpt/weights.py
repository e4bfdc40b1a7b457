"""The weights a command reads: a run's checkpoint, OpenAI's GPT-2, or a nanoGPT ckpt.pt.

`init_from` as the CLIs spell it: 'resume' (a checkpoint of out_dir),
'gpt2*' (hf.py) or 'nanogpt:PATH' (nanogpt_ckpt.py).
"""

from __future__ import annotations

from typing import Any

import ml_collections

from jaxgpt import defaults, hf, nanogpt_ckpt, run_dir
from jaxgpt.errors import UserError
from jaxgpt.model import GPT, GPTConfig


def load(init_from: str, *, out_dir: str, step: int | None = None, hf_checkpoint_dir: str = "",
         dtype: str | None = None) -> tuple[ml_collections.ConfigDict, Any, str]:
  """(config, params, where they came from); GPT-2 and nanoGPT weights run in float32."""
  if init_from == "resume":
    config, params, step = run_dir.RunDir(out_dir).restore_params(step)
    source = f"{out_dir} step {step}"
  else:
    config, params, source = _pretrained(init_from, hf_checkpoint_dir)
  if dtype:
    config.dtype = dtype
  return config, params, source


def _pretrained(init_from: str, hf_checkpoint_dir: str
                ) -> tuple[ml_collections.ConfigDict, Any, str]:
  if init_from in defaults.GPT2_MODELS:
    source = hf.checkpoint_dir(init_from, hf_checkpoint_dir)
    arch, params = hf.load(source)
  elif init_from.startswith(defaults.NANOGPT):
    source = nanogpt_ckpt.path_of(init_from)
    arch, params, iter_num = nanogpt_ckpt.read(source)
    source = f"{source} (nanoGPT iter {iter_num})"
  else:
    raise UserError(f"--init_from={init_from}: must be 'resume', one of "
                    f"{', '.join(defaults.GPT2_MODELS)}, or {defaults.NANOGPT}PATH")
  config = defaults.get_config()
  config.update(arch, dropout=0.0, dtype="float32")
  return config, params, source


def load_model(init_from: str, **kwargs: Any) -> tuple[GPT, Any, str]:
  """The model and params of `load`, and where they came from."""
  config, params, source = load(init_from, **kwargs)
  return GPT(GPTConfig.from_config(config)), params, source
