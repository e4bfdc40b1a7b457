"""GPT-2 weights in and out of the Hugging Face format (config.json + model.safetensors).

transformers' GPT-2 stores its linear layers as Conv1D with (in, out)
weights, the layout of a flax Dense kernel, so no matrix is transposed; the
fused QKV splits into q, k, v and heads in the same order as ours. The
vocabulary stays at the checkpoint's 50257, unpadded (docs/design.md says why).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import safetensors.numpy
from flax import traverse_util

from jaxgpt import model, tokenizer
from jaxgpt.errors import UserError, first_line, missing_folders
from jaxgpt.model import GPT, GPTConfig, init_params

# (n_layer, n_embd) of each of OpenAI's sizes, as nanoGPT's from_pretrained spells them out.
SIZES = {"gpt2": (12, 768), "gpt2-medium": (24, 1024), "gpt2-large": (36, 1280),
         "gpt2-xl": (48, 1600)}
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")
# The checkpoint's old attention-mask buffers.
IGNORED_KEYS = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")
# transformers' name for the LM head: outside 'transformer.', as (vocab, n_embd) as our Embed.
HF_HEAD = "lm_head.weight"
# GPT-2's vocabulary padded to a multiple of 64 (nanoGPT's vocab_size): rows past 50257 up to
# here are padding, which no GPT-2 token trains; a larger vocabulary's may be trained rows.
PADDED_VOCAB = -(-tokenizer.N_VOCAB // 64) * 64


def _our_path(hf_key: str) -> tuple[str, ...]:
  """'h.3.attn.c_attn.weight' -> ('h_3', 'attn', 'c_attn', 'kernel')."""
  parts = re.sub(r"^h\.(\d+)\.", r"h_\1.", hf_key).split(".")
  module, leaf = parts[-2], parts[-1]
  if leaf == "weight":
    leaf = ("embedding" if module in ("wte", "wpe", "lm_head") else
            "scale" if module.startswith("ln_") else "kernel")
  return (*parts[:-1], leaf)


def _hf_key(path: tuple[str, ...]) -> str:
  """The inverse of `_our_path`, with the 'transformer.' prefix transformers writes."""
  *modules, leaf = path
  if modules == ["lm_head"]:
    return HF_HEAD
  name = re.sub(r"^h_(\d+)\.", r"h.\1.", ".".join(modules))
  return f"transformer.{name}.{'bias' if leaf == 'bias' else 'weight'}"


def read_config(hf_dir: str) -> dict[str, Any]:
  """Our architecture keys from a transformers GPT-2 config.json, or an error naming the misfit."""
  path = os.path.join(hf_dir, "config.json")
  if not os.path.exists(path):
    raise UserError(f"{path} not found: not a Hugging Face checkpoint directory")
  try:
    with open(path, encoding="utf-8") as f:
      hf = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"{path}: not readable as JSON ({e})") from None
  if not isinstance(hf, dict):
    raise UserError(f"{path}: not a JSON object")
  sizes = ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size")
  problems = [f"no {key!r}" if key not in hf else f"{key}={hf[key]!r} (need a positive integer)"
              for key in sizes if type(hf.get(key)) is not int or hf[key] < 1]  # no bool, float
  heads, width = hf.get("n_head"), hf.get("n_embd")
  if not problems and width % heads:
    problems.append(f"n_embd={width} does not split into n_head={heads} heads")
  if not isinstance(hf.get("tie_word_embeddings", True), bool):
    problems.append(f"tie_word_embeddings={hf['tie_word_embeddings']!r} (need true or false)")
  if hf.get("model_type") != "gpt2":
    problems.append(f"model_type={hf.get('model_type')!r} (need 'gpt2')")
  act = hf.get("activation_function", "gelu_new")
  if act not in TANH_GELUS + ("gelu",):
    problems.append(f"activation_function={act!r} (need one of {TANH_GELUS + ('gelu',)})")
  if hf.get("layer_norm_epsilon", 1e-5) != 1e-5:
    problems.append(f"layer_norm_epsilon={hf['layer_norm_epsilon']} (need 1e-05)")
  if hf.get("n_inner") not in (None, 4 * width if type(width) is int else None):
    problems.append(f"n_inner={hf['n_inner']} (need 4 * n_embd)")
  if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx"):
    problems.append("attention scaling other than 1/sqrt(head size)")
  if problems:
    raise UserError(f"{path}: not a GPT-2 this model can hold: {'; '.join(problems)}")
  return {"n_layer": hf["n_layer"], "n_head": hf["n_head"], "n_embd": hf["n_embd"],
          "block_size": hf["n_positions"], "vocab_size": hf["vocab_size"], "bias": True,
          "gelu_approximate": act in TANH_GELUS,
          "tie_embeddings": hf.get("tie_word_embeddings", True)}


def _read_tensors(hf_dir: str) -> dict[str, np.ndarray]:
  single = os.path.join(hf_dir, "model.safetensors")
  index = os.path.join(hf_dir, "model.safetensors.index.json")
  torch_bin = os.path.join(hf_dir, "pytorch_model.bin")
  if os.path.exists(single):
    return _readable(single, safetensors.numpy.load_file)
  if os.path.exists(index):
    weight_map = lambda p: json.loads(pathlib.Path(p).read_text(encoding="utf-8"))["weight_map"]
    files = sorted(set(_readable(index, weight_map).values()))
    return {k: v for name in files for k, v in
            _readable(os.path.join(hf_dir, name), safetensors.numpy.load_file).items()}
  if os.path.exists(torch_bin):
    try:
      import torch
    except ImportError as e:
      raise UserError(f"{torch_bin}: reading pytorch_model.bin needs torch; install it or "
                        "convert the checkpoint to model.safetensors") from e
    state = _readable(torch_bin, lambda p: torch.load(p, map_location="cpu", weights_only=True))
    return {k: v.float().numpy() for k, v in state.items()}
  raise UserError(f"{hf_dir}: no model.safetensors, model.safetensors.index.json or "
                          "pytorch_model.bin")


def _readable(path: str, read: Callable[[str], Any]) -> Any:
  """`read(path)`, where a file that does not read back (truncated, not what its name says) is
  an error naming it."""
  try:
    return read(path)
  except Exception as e:  # safetensors', torch's and json's errors share no base class
    raise UserError(f"{path}: not a readable checkpoint file ({type(e).__name__}: "
                    f"{first_line(e)})") from e


def load(hf_dir: str) -> tuple[dict[str, Any], dict]:
  """(architecture keys, float32 params) of a transformers GPT-2 checkpoint directory."""
  arch = read_config(hf_dir)
  return arch, to_params(_read_tensors(hf_dir), arch, hf_dir)


def to_params(tensors: dict[str, np.ndarray], arch: dict[str, Any], source: str) -> dict:
  """Our float32 param tree from tensors under GPT-2's names, linear weights (in, out) as
  transformers' Conv1D stores them, each checked against `arch`; `source` names it in errors."""
  expected = traverse_util.flatten_dict(jax.eval_shape(
      lambda: init_params(GPT(GPTConfig(**arch)), jax.random.PRNGKey(0))))
  if ("lm_head", "embedding") not in expected:
    tensors = _tied(tensors, source)
  flat = {}
  for key, value in tensors.items():
    key = key.removeprefix("transformer.")
    path = _our_path(key)
    if IGNORED_KEYS.fullmatch(key) or (key == HF_HEAD and path not in expected):  # tied
      continue
    if path not in expected:
      raise UserError(f"{source}: unexpected tensor {key!r} for a GPT-2")
    if value.shape != expected[path].shape:
      raise UserError(f"{source}: {key} has shape {value.shape}, expected "
                      f"{expected[path].shape} from its configuration")
    flat[path] = np.asarray(value, np.float32)
  missing = sorted(_hf_key(p) for p in expected.keys() - flat.keys())
  if missing:
    raise UserError(f"{source}: missing tensors {missing}")
  return traverse_util.unflatten_dict(flat)


def _tied(tensors: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
  """A tied checkpoint's tensors with the shared matrix as wte: `safetensors.torch.save_model`
  keeps it as lm_head.weight alone. A head other than wte is refused: transformers' versions
  disagree on which of the two such a file means."""
  if HF_HEAD not in tensors:
    return tensors
  wte_key = next((k for k in ("transformer.wte.weight", "wte.weight") if k in tensors), None)
  if wte_key is None:
    return {**tensors, "transformer.wte.weight": tensors[HF_HEAD]}
  if not np.array_equal(tensors[wte_key], tensors[HF_HEAD], equal_nan=True):  # a diverged run's
    raise UserError(f"{source}: {HF_HEAD} differs from {wte_key}, though the model ties them; "
                    "a Hugging Face checkpoint with a head of its own says "
                    "tie_word_embeddings: false in its config.json")
  return tensors


def named_architecture(init_from: str) -> dict[str, Any]:
  """The architecture keys of OpenAI's weights of size `init_from` (`read_config` of their
  config.json), known from the name: every size's heads are 64 wide, its positions 1024."""
  n_layer, n_embd = SIZES[init_from]
  return {"n_layer": n_layer, "n_head": n_embd // 64, "n_embd": n_embd, "block_size": 1024,
          "vocab_size": tokenizer.N_VOCAB, "bias": True, "gelu_approximate": True,
          "tie_embeddings": True}


def checkpoint_dir(init_from: str, hf_checkpoint_dir: str) -> str:
  """The local directory to read: `hf_checkpoint_dir`, or the Hub's copy, downloaded once.

  A local directory must hold the size `init_from` names, which the run and
  every log line call it by.
  """
  hf_checkpoint_dir = os.path.expanduser(hf_checkpoint_dir)  # a config's `~/x` too
  if hf_checkpoint_dir:
    if not os.path.isdir(hf_checkpoint_dir):
      raise UserError(f"hf_checkpoint_dir={hf_checkpoint_dir!r} is not a directory")
    arch = read_config(hf_checkpoint_dir)
    (n_layer, n_embd), held = SIZES[init_from], (arch["n_layer"], arch["n_embd"])
    if held != (n_layer, n_embd):
      named = next((name for name, size in SIZES.items() if size == held),
                   "none of GPT-2's sizes")
      raise UserError(f"init_from={init_from} is n_layer={n_layer}, n_embd={n_embd}, but "
                      f"hf_checkpoint_dir={hf_checkpoint_dir!r} holds n_layer={held[0]}, "
                      f"n_embd={held[1]} ({named})")
    return hf_checkpoint_dir
  repo = f"openai-community/{init_from}"
  import huggingface_hub
  try:
    return huggingface_hub.snapshot_download(
        repo, allow_patterns=["config.json", "*.safetensors", "*.safetensors.index.json"])
  except Exception as e:
    why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__  # one line
    raise UserError(f"could not download {repo} from the Hugging Face Hub ({why}); fetch it "
                    "where there is internet and pass its folder (--hf_checkpoint_dir / "
                    "--config.hf_checkpoint_dir)") from e


# The architecture keys a GPT2LMHeadModel's config.json expresses (sizes, biases, the GELU,
# a tied or untied head).
GPT2_KEYS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "bias",
             "gelu_approximate", "tie_embeddings")


def differences(cfg: GPTConfig) -> list[str]:
  """The architecture keys (model.ARCHITECTURE) outside GPT2_KEYS that this model sets away
  from GPT-2's, as 'key=value': what transformers' GPT2LMHeadModel cannot hold (e.g.
  'pos_emb=rope'). A key added to the model later is refused until export learns it."""
  gpt2 = GPTConfig()
  return [f"{key}={getattr(cfg, key)}" for key in model.ARCHITECTURE
          if key not in GPT2_KEYS and getattr(cfg, key) != getattr(gpt2, key)]


def check_exportable(config: GPTConfig) -> None:
  """Refuses a model GPT2LMHeadModel cannot hold, naming the keys."""
  departures = differences(config)
  if departures:
    raise UserError(f"this run's model is not GPT-2's architecture ({', '.join(departures)}), "
                    "so transformers' GPT2LMHeadModel cannot hold it; nothing was written")


def check_new_dir(to_dir: str) -> None:
  """Refuses a directory an export would overwrite, or could not make (a file above it)."""
  if os.path.exists(to_dir) and not (os.path.isdir(to_dir) and not os.listdir(to_dir)):
    what = "a directory that is not empty" if os.path.isdir(to_dir) else "a file"
    raise UserError(f"{to_dir} is {what}; nothing was written. Pick a new or empty "
                    "directory.")
  if not os.path.exists(to_dir):
    _missing_folders(os.path.dirname(os.path.realpath(to_dir)), to_dir)


def export(params: dict, config: GPTConfig, to_dir: str) -> bool:
  """Writes a directory that transformers' GPT2LMHeadModel and AutoTokenizer load; returns
  whether GPT-2's tokenizer files went with it (for 50257 tokens or more, as sample reads
  them). Up to PADDED_VOCAB, the vocabulary is cropped to GPT-2's 50257; a larger one is whole.

  A model without biases gets zero biases; a modern one is refused: GPT2LMHeadModel would
  load it and compute something else. The files (umask's permissions) go into a hidden folder
  beside `to_dir`, renamed to it (or moved into an empty one) once whole: a failure leaves none.
  """
  check_exportable(config)
  check_new_dir(to_dir)
  with_tokenizer = config.vocab_size >= tokenizer.N_VOCAB
  bpe_files = tokenizer.bpe_files() if with_tokenizer else {}  # a failure here writes nothing
  vocab = tokenizer.N_VOCAB if tokenizer.N_VOCAB <= config.vocab_size <= PADDED_VOCAB else (
      config.vocab_size)
  tensors = {_hf_key(path): np.asarray(value, np.float32)
             for path, value in traverse_util.flatten_dict(params).items()}
  for name in {"transformer.wte.weight", HF_HEAD} & tensors.keys():  # the head, if untied
    tensors[name] = tensors[name][:vocab]
  if not config.bias:
    tensors.update(_zero_biases(tensors))
  target = os.path.realpath(to_dir)  # a link to an empty directory: that directory filled
  # An empty directory that is there already is filled, not replaced: it keeps its mode, owner
  # and ACLs, and it may be a mount point (a container's volume), which no rename replaces.
  fill = os.path.isdir(target)
  parent = target if fill else os.path.dirname(target)
  made = _missing_folders(parent, to_dir)
  try:
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.", dir=parent)
  except OSError as e:
    raise UserError(f"{to_dir}: cannot write there ({e.strerror}); nothing was written") from None
  moved: list[str] = []
  try:
    _write_files(staging, tensors, _hf_config(config, vocab, with_tokenizer), bpe_files,
                 config.block_size if with_tokenizer else None)
    if fill:
      for name in sorted(os.listdir(staging)):
        _move_in(staging, target, name, to_dir)
        moved.append(name)
      shutil.rmtree(staging)  # the names of the files linked into `target`
    else:
      os.rename(staging, target)
  except BaseException as e:  # a full disk, or a Ctrl-C: nothing is left either way
    shutil.rmtree(staging, ignore_errors=True)
    for path in [os.path.join(target, name) for name in moved]:
      with contextlib.suppress(OSError):
        os.remove(path)
    for folder in made:
      with contextlib.suppress(OSError):
        os.rmdir(folder)
    if not isinstance(e, (OSError, safetensors.SafetensorError)):  # safetensors': a full disk
      raise
    reason = e.strerror if isinstance(e, OSError) else first_line(e)
    raise UserError(f"{to_dir}: writing the export failed ({reason}); nothing was "
                    "left there") from None
  return with_tokenizer


def _move_in(staging: str, target: str, name: str, to_dir: str) -> None:
  """Puts `staging`'s file `name` into `target`, never over another export's: a hard link fails
  where the name is taken, at once (between a check and a rename, another export's file could
  come and be replaced); where a filesystem refuses links, that check and rename."""
  source, path = os.path.join(staging, name), os.path.join(target, name)
  try:
    os.link(source, path)
    return
  except FileExistsError:  # or NFS's answer to a LINK it had made and was sent again
    taken = not os.path.samefile(source, path)
  except OSError:  # no hard links there (EPERM, ENOTSUP: FAT, some network or FUSE filesystems)
    taken = os.path.lexists(path)
  if taken:
    raise UserError(f"{to_dir}: {name} was written there meanwhile (by another export?); it is "
                    "kept, and nothing of this export was left there")
  os.rename(source, path)


def _missing_folders(parent: str, to_dir: str) -> list[str]:
  """`parent`'s folders not there (`missing_folders`); a file among them is refused by name
  (makedirs would say "File exists")."""
  missing = missing_folders(parent)
  if missing and os.path.lexists(missing[-1]):
    raise UserError(f"{to_dir}: {missing[-1]} is a file, not a directory; nothing was written")
  return missing


def _write_files(to_dir: str, tensors: dict[str, np.ndarray], hf_config: dict[str, Any],
                 bpe_files: dict[str, str], tokenizer_max_length: int | None) -> None:
  """The export's files, with the permissions the umask gives (mkdtemp made `to_dir` 0700)."""
  safetensors.numpy.save_file(tensors, os.path.join(to_dir, "model.safetensors"),
                              metadata={"format": "pt"})
  _write_json(os.path.join(to_dir, "config.json"), hf_config)
  for name, source in bpe_files.items():
    shutil.copyfile(source, os.path.join(to_dir, name))
  if tokenizer_max_length is not None:
    _write_json(os.path.join(to_dir, "tokenizer_config.json"), {
        "tokenizer_class": "GPT2Tokenizer", "model_max_length": tokenizer_max_length,
        "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
        "add_prefix_space": False})
  umask = os.umask(0)
  os.umask(umask)
  for name in os.listdir(to_dir):
    os.chmod(os.path.join(to_dir, name), 0o666 & ~umask)
  os.chmod(to_dir, 0o777 & ~umask)


def _zero_biases(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """GPT-2's bias for every Linear (Conv1D) and LayerNorm weight that has none."""
  zeros = {}
  for key, weight in tensors.items():
    module = key.rsplit(".", 1)[0]
    if key.endswith(".weight") and ("ln_" in module or module.endswith(("c_attn", "c_proj",
                                                                        "c_fc"))):
      zeros[f"{module}.bias"] = np.zeros(weight.shape[-1], np.float32)
  return zeros


def _hf_config(config: GPTConfig, vocab: int, gpt2_tokens: bool) -> dict[str, Any]:
  # Without GPT-2's end-of-text, None: transformers would take 50256, which is not it.
  eot = tokenizer.EOT_TOKEN if gpt2_tokens else None
  return {
      "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
      "activation_function": "gelu_new" if config.gelu_approximate else "gelu",
      "vocab_size": vocab, "n_positions": config.block_size, "n_ctx": config.block_size,
      "n_embd": config.n_embd,
      "n_layer": config.n_layer, "n_head": config.n_head, "n_inner": None,
      "layer_norm_epsilon": 1e-5, "initializer_range": 0.02, "resid_pdrop": config.dropout,
      "embd_pdrop": config.dropout, "attn_pdrop": config.dropout, "scale_attn_weights": True,
      "tie_word_embeddings": config.tie_embeddings, "use_cache": True, "bos_token_id": eot,
      "eos_token_id": eot,
  }


def _write_json(path: str, value: dict[str, Any]) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=2)
