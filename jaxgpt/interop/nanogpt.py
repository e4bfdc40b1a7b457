"""A nanoGPT `ckpt.pt` as our architecture and params: evaluate, sample or continue a nanoGPT run.

nanoGPT's train.py saves a dict with `model_args` (n_layer, n_head, n_embd,
block_size, bias, vocab_size, dropout), `model` (the state_dict, every name
prefixed with `_orig_mod.` when the model ran under torch.compile),
`iter_num`, the optimizer state and the config. Its names are GPT-2's (so
gpt2.py maps them); its nn.Linear weights are (out, in) and are transposed to
our (in, out) kernels; its GELU is exact (erf). torch is needed here alone,
imported on use; the optimizer state is never read (the file is memory-mapped).
"""

from __future__ import annotations

import os
import pickle
import re
from typing import Any

from jaxgpt import defaults
from jaxgpt.errors import UserError
from jaxgpt.interop import gpt2

LINEAR_WEIGHT = re.compile(r".*\.(c_attn|c_proj|c_fc)\.weight")
MODEL_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size")


def read(path: str) -> tuple[dict[str, Any], dict, int]:
  """(architecture keys, float32 params, iter_num) of a nanoGPT checkpoint file."""
  path = os.path.expanduser(path)  # nanogpt:~/x, which no shell expands
  try:
    import torch
  except ImportError:
    raise UserError(f"{defaults.NANOGPT}{path}: reading a nanoGPT ckpt.pt needs PyTorch: "
                    "pip install torch") from None
  if not os.path.isfile(path):
    raise UserError(f"{defaults.NANOGPT}{path}: no such file")
  try:
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
  except (RuntimeError, ValueError, EOFError, OSError, pickle.UnpicklingError) as e:
    raise UserError(f"{path}: not a PyTorch checkpoint torch.load can read ({e})") from None
  if not isinstance(ckpt, dict) or "model_args" not in ckpt or "model" not in ckpt:
    raise UserError(f"{path}: not a nanoGPT checkpoint (no 'model_args' and 'model', which "
                    "nanoGPT's train.py saves)")
  args = ckpt["model_args"]
  missing = [k for k in MODEL_ARGS if k not in args]
  if missing:
    raise UserError(f"{path}: model_args lacks {missing}")
  arch = {k: (bool if k == "bias" else int)(args[k]) for k in MODEL_ARGS}
  arch["gelu_approximate"] = False  # nanoGPT's nn.GELU() is the exact one
  tensors = {}
  for key, value in ckpt["model"].items():
    key = key.removeprefix("_orig_mod.")
    array = value.float().numpy()
    tensors[key] = array.T if LINEAR_WEIGHT.fullmatch(key) else array
  return arch, gpt2.to_params(tensors, arch, path), int(ckpt.get("iter_num", 0))
