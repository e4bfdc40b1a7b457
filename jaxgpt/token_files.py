"""Token-shard formats: write llm.c shards; read llm.c, nanoGPT and build-nanogpt files.

1. llm.c / modded-nanogpt `.bin`: a 256 x int32 header (magic 20240520,
   version 1, token count), then uint16 tokens.
2. nanoGPT's headerless `train.bin` / `val.bin`: uint16 tokens.
3. build-nanogpt's `.npy`: a numpy uint16 array.

Readers return read-only memory maps, so a shard of any size costs no RAM.
"""

from __future__ import annotations

import glob
import json
import os
import pickle
import re
from typing import Any

import numpy as np

from jaxgpt.errors import UserError

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
MAX_SHARD_TOKENS = 2**31 - 1  # the header counts tokens in an int32
HEADER_BYTES = HEADER_INTS * 4
META_FILE = "meta.json"
SPLITS = ("train", "val")
GPT2_VOCAB = 50257  # GPT-2's BPE ids, what `prepare` writes; tokenizer.py builds the BPE


class ShardError(UserError, ValueError):
  """A token file that cannot be read as what it claims to be."""


def write_shard(path: str, tokens: np.ndarray) -> None:
  """Writes an llm.c shard atomically: a reader never sees a half-written file."""
  tokens = np.asarray(tokens)
  if tokens.size > MAX_SHARD_TOKENS:
    raise ShardError(f"{path}: {tokens.size:,} tokens; a shard holds {MAX_SHARD_TOKENS:,}")
  if tokens.size and (tokens.min() < 0 or tokens.max() >= 2**16):
    raise ShardError(f"{path}: token ids must fit in uint16, got range "
                     f"[{tokens.min()}, {tokens.max()}]")
  header = np.zeros(HEADER_INTS, dtype="<i4")
  header[:3] = (MAGIC, VERSION, tokens.size)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(header.tobytes())
    f.write(np.ascontiguousarray(tokens, dtype="<u2").data)  # no copy of a uint16 array
  os.replace(tmp, path)


def read_tokens(path: str) -> np.ndarray:
  """Memory-maps the uint16 tokens of one file in any of the three formats."""
  if not os.path.isfile(path):
    raise ShardError(f"{path}: no such token file")
  size = os.path.getsize(path)
  if path.endswith(".npy"):
    try:
      tokens = np.load(path, mmap_mode="r")
    except (ValueError, EOFError) as e:  # EOFError: an empty file (a writer killed at once)
      raise ShardError(f"{path}: not a readable .npy file ({e or type(e).__name__})") from e
    if tokens.dtype != np.uint16 or tokens.ndim != 1:
      raise ShardError(f"{path}: expected a 1-D uint16 array, got {tokens.dtype} "
                       f"with shape {tokens.shape}")
    return tokens
  if not path.endswith(".bin"):
    raise ShardError(f"{path}: unknown token-file format (expected .bin or .npy)")
  header = np.fromfile(path, dtype="<i4", count=HEADER_INTS) if size >= HEADER_BYTES else None
  if header is not None and header[0] != MAGIC and _looks_like_a_header(header):
    raise ShardError(f"{path}: starts with an llm.c-style header of magic {header[0]} (version "
                     f"{header[1]}), not llm.c's {MAGIC}; refusing to read the header as tokens. "
                     "Rewrite the file with `python -m jaxgpt.prepare`.")
  if header is not None and header[0] == MAGIC:
    if header[1] != VERSION:
      raise ShardError(f"{path}: llm.c shard version {header[1]}, expected {VERSION}")
    n = int(header[2])
    if size != HEADER_BYTES + 2 * n:
      raise ShardError(f"{path}: header says {n} tokens ({HEADER_BYTES + 2 * n} bytes) but "
                       f"the file has {size} bytes; it is truncated or corrupt")
    return np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(n,))
  if size % 2:
    raise ShardError(f"{path}: {size} bytes is not a whole number of uint16 tokens")
  if size == 0:
    raise ShardError(f"{path}: empty token file")
  return np.memmap(path, dtype="<u2", mode="r")


def _looks_like_a_header(header: np.ndarray) -> bool:
  """An int32 header's shape: a small version, a token count, then 253 zero ints.

  A headerless token file would need 506 consecutive zero tokens there, which
  text never gives.
  """
  return 0 < header[1] < 1000 and header[2] > 0 and not header[3:].any()


def split_of(filename: str) -> str | None:
  """The split a token file's name says: the last of its words (between '_', '-' and '.') that
  names one. 'medieval_train_000000.bin' is train, though 'medieval' holds 'val'."""
  said = [word for word in re.split(r"[_.\-]", filename) if word in SPLITS]
  return said[-1] if said else None


def find_shards(data_dir: str, split: str) -> list[str]:
  """The token files of a split (.bin or .npy, `split_of` their name), sorted."""
  paths = sorted(glob.glob(os.path.join(data_dir, "*.bin")) +
                 glob.glob(os.path.join(data_dir, "*.npy")))
  return [p for p in paths if not os.path.basename(p).startswith(".")
          and split_of(os.path.basename(p)) == split]


def check_vocab(path: str, tokens: np.ndarray, vocab_size: int) -> None:
  """Fails naming the file when a token id does not fit the model's vocabulary."""
  if tokens.size and int(tokens.max()) >= vocab_size:
    raise ShardError(f"{path}: token id {int(tokens.max())} >= vocab_size {vocab_size}")


def nanogpt_vocab(data_dir: str) -> int | None:
  """The vocab_size in nanoGPT's meta.pkl beside train.bin (its character-level datasets
  have one), read as plain data: no code in the pickle runs."""
  path = os.path.join(data_dir, "meta.pkl")
  if not os.path.isfile(path):
    return None

  class PlainData(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
      raise pickle.UnpicklingError(f"it names {module}.{name}, not only plain data")

  try:
    with open(path, "rb") as f:
      meta = PlainData(f).load()
  except Exception as e:  # noqa: BLE001 - a damaged pickle fails in many ways
    raise UserError(f"{path}: not a nanoGPT meta.pkl ({type(e).__name__}: {e})") from None
  vocab_size = meta.get("vocab_size") if isinstance(meta, dict) else None
  return vocab_size if isinstance(vocab_size, int) else None


def write_meta(data_dir: str, meta: dict[str, Any]) -> None:
  tmp = os.path.join(data_dir, f".{META_FILE}.tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(meta, f, indent=2)
  os.replace(tmp, os.path.join(data_dir, META_FILE))


def read_meta(data_dir: str) -> dict[str, Any] | None:
  path = os.path.join(data_dir, META_FILE)
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)
