"""A nanoGPT `ckpt.pt` as our architecture and params: evaluate, sample or continue a nanoGPT run.

nanoGPT's train.py saves a dict with `model_args` (n_layer, n_head, n_embd,
block_size, bias, vocab_size, dropout), `model` (the state_dict, every name
prefixed with `_orig_mod.` when the model ran under torch.compile),
`iter_num`, the optimizer state and the config. Its names are GPT-2's (so
gpt2.py maps them); its nn.Linear weights are (out, in) and are transposed to
our (in, out) kernels; its GELU is exact (erf). torch is needed here alone,
imported on use; the optimizer state is never read from the zip file torch saves
(memory-mapped), though a legacy (non-zip) file is loaded whole.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from typing import Any

from jaxgpt import defaults
from jaxgpt.errors import UserError, first_line
from jaxgpt.interop import gpt2

LINEAR_WEIGHT = re.compile(r".*\.(c_attn|c_proj|c_fc)\.weight")
MODEL_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size")


def read(path: str) -> tuple[dict[str, Any], dict, int]:
  """(architecture keys, float32 params, iter_num) of a nanoGPT checkpoint file, or of the
  ckpt.pt in a nanoGPT out_dir."""
  ckpt, path = _load(path)
  arch = _architecture(ckpt, path)
  tensors = {}
  for key, value in ckpt["model"].items():
    if not hasattr(value, "float"):
      raise UserError(f"{path}: model[{key!r}] is a {type(value).__name__}, not a tensor")
    key = key.removeprefix("_orig_mod.")
    array = value.float().numpy()
    tensors[key] = array.T if LINEAR_WEIGHT.fullmatch(key) else array
  return arch, gpt2.to_params(tensors, arch, path), int(ckpt.get("iter_num", 0))


def architecture(path: str) -> dict[str, Any]:
  """`read`'s architecture keys alone: a zip file's tensors are mapped, never read."""
  return _architecture(*_load(path))


def _load(path: str) -> tuple[dict, str]:
  """The checkpoint's dict (tensors memory-mapped where torch can) and the file it is in."""
  path = os.path.expanduser(path)  # nanogpt:~/x, which no shell expands
  try:
    import torch
  except ImportError:
    raise UserError(f"{defaults.NANOGPT}{path}: reading a nanoGPT ckpt.pt needs PyTorch: "
                    "pip install torch") from None
  if os.path.isdir(path) and os.path.isfile(os.path.join(path, "ckpt.pt")):
    path = os.path.join(path, "ckpt.pt")  # nanoGPT's out_dir, as its init_from=resume reads it
  if not os.path.isfile(path):
    raise UserError(f"{defaults.NANOGPT}{path}: " + ("a folder without a ckpt.pt" if
                                                   os.path.isdir(path) else "no such file"))
  try:  # torch's legacy format (not a zip: an old torch.save, or a re-saved file) is not mapped
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
  except pickle.UnpicklingError as e:  # torch's page of advice names the object it refused
    refused = re.search(r"GLOBAL (\S+)", str(e))
    if refused is None:  # bytes that are no pickle, say ("Unsupported operand 110")
      said = re.search(r"WeightsUnpickler error:\s*(.+)", str(e))
      raise UserError(f"{path}: not a PyTorch checkpoint torch.load can read "
                      f"({said.group(1) if said else first_line(e)})") from None
    raise UserError(f"{path}: holds {refused.group(1)}, which is not unpickled (it could run "
                    "code): nanoGPT's train.py saves tensors and plain values only") from None
  except MemoryError:
    raise
  except Exception as e:  # noqa: BLE001 - other bytes fail torch.load in many ways (KeyError)
    why = ": ".join(filter(None, (type(e).__name__, first_line(e))))
    raise UserError(f"{path}: not a PyTorch checkpoint torch.load can read ({why})") from None
  if not (isinstance(ckpt, dict) and isinstance(ckpt.get("model_args"), dict)
          and isinstance(ckpt.get("model"), dict)):
    raise UserError(f"{path}: not a nanoGPT checkpoint (no 'model_args' and 'model' dicts, "
                    "which nanoGPT's train.py saves)")
  return ckpt, path


def _architecture(ckpt: dict, path: str) -> dict[str, Any]:
  """Our architecture keys from the checkpoint's model_args, or an error naming the misfit."""
  args = ckpt["model_args"]
  missing = [k for k in MODEL_ARGS if k not in args]
  if missing:
    raise UserError(f"{path}: model_args lacks {missing}")
  try:
    arch = {k: (bool if k == "bias" else int)(args[k]) for k in MODEL_ARGS}
  except (TypeError, ValueError) as e:
    raise UserError(f"{path}: model_args holds a value that is not a number ({e})") from None
  below_one = [f"{k}={arch[k]}" for k in MODEL_ARGS if k != "bias" and arch[k] < 1]
  if below_one:  # a vocab_size of 0 was an IndexError from the model's init
    raise UserError(f"{path}: model_args {', '.join(below_one)} (need a positive integer)")
  if arch["n_embd"] % arch["n_head"]:
    raise UserError(f"{path}: model_args n_embd={arch['n_embd']} does not split into "
                    f"n_head={arch['n_head']} heads")
  arch["gelu_approximate"] = False  # nanoGPT's nn.GELU() is the exact one
  arch["tie_embeddings"] = True  # its lm_head is its wte
  return arch
