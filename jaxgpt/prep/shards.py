"""Documents to a dataset directory: train/val llm.c shards plus meta.json, written safely.

How documents are split and why a directory with meta.json is complete:
docs/design.md, "Token shard formats". The val cap means a small corpus keeps
10% for val and a large one 10M tokens, the same on every run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterable
from typing import Any

import numpy as np

from jaxgpt import token_files, tokenizer
from jaxgpt.prep.readers import Piece, PrepareError
from jaxgpt.prep.tokenize import tokenized

SHARD_TOKENS = 100_000_000  # tokens per shard file, as llm.c's FineWeb script writes
VAL_FRACTION = 0.1
VAL_TOKENS = 10_000_000
STAGING = ".incomplete"
MAX_SHARD_TOKENS = 2**31 - 1  # the header counts tokens in an int32


def write_shard(path: str, tokens: np.ndarray) -> None:
  """Writes an llm.c shard (token_files.py reads it) atomically: a reader never sees half."""
  tokens = np.asarray(tokens)
  if tokens.size > MAX_SHARD_TOKENS:
    raise token_files.ShardError(f"{path}: {tokens.size:,} tokens; a shard holds "
                                 f"{MAX_SHARD_TOKENS:,}")
  if tokens.size and (tokens.min() < 0 or tokens.max() >= 2**16):
    raise token_files.ShardError(f"{path}: token ids must fit in uint16, got range "
                                 f"[{tokens.min()}, {tokens.max()}]")
  header = np.zeros(token_files.HEADER_INTS, dtype="<i4")
  header[:3] = (token_files.MAGIC, token_files.VERSION, tokens.size)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(header.tobytes())
    f.write(np.ascontiguousarray(tokens, dtype="<u2").data)  # no copy of a uint16 array
  os.replace(tmp, path)


def write_meta(data_dir: str, meta: dict[str, Any]) -> None:
  tmp = os.path.join(data_dir, f".{token_files.META_FILE}.tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(meta, f, indent=2)
  os.replace(tmp, os.path.join(data_dir, token_files.META_FILE))


def is_val(doc_id: str, val_fraction: float) -> bool:
  """Deterministic split: a document is val when the hash of its id falls under the fraction."""
  # surrogateescape: a file name that is not UTF-8 (Latin-1, say) hashes as its own bytes.
  h = int.from_bytes(hashlib.sha1(doc_id.encode("utf-8", "surrogateescape")).digest()[:8],
                     "little")
  return h / 2**64 < val_fraction


class _ShardWriter:
  """Fills one split's shard buffer and writes each shard as it fills."""

  def __init__(self, out_dir: str, name: str, split: str, shard_tokens: int):
    # A leading dot would hide the shards: token readers skip dotfiles, as they skip staging.
    self.out_dir, self.name, self.split = out_dir, name.lstrip(".") or "data", split
    self.buffer = np.empty(shard_tokens, np.uint16)  # pages are touched only as tokens arrive
    self.filled = 0
    self.paths: list[str] = []
    self.tokens = 0
    self.documents = 0

  def add(self, tokens: np.ndarray) -> None:
    self.tokens += tokens.size
    while tokens.size:
      n = min(tokens.size, self.buffer.size - self.filled)
      self.buffer[self.filled:self.filled + n] = tokens[:n]
      self.filled += n
      tokens = tokens[n:]
      if self.filled == self.buffer.size:
        self.flush()

  def flush(self) -> None:
    if self.filled:
      path = os.path.join(self.out_dir, f"{self.name}_{self.split}_{len(self.paths):06d}.bin")
      write_shard(path, self.buffer[:self.filled])
      self.paths.append(path)
      self.filled = 0


class _Progress:
  """A tqdm bar over input bytes (or tokens, under max_tokens) with docs/s and tokens/s."""

  def __init__(self, total_bytes: int | None, max_tokens: int, enabled: bool):
    from tqdm import tqdm
    self.by_tokens = max_tokens > 0
    # The bar counts input bytes (parquet is compressed) for its ETA but shows no byte rate:
    # the one MB/s figure is the summary's, of text.
    self.bar = tqdm(total=max_tokens if self.by_tokens else total_bytes,
                    disable=not (enabled and sys.stderr.isatty()),
                    unit="tok" if self.by_tokens else "B", unit_scale=True, smoothing=0.1,
                    desc="tokenizing", dynamic_ncols=True, mininterval=1.0,
                    bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}{postfix}")
    self.start = time.perf_counter()
    self.documents = self.tokens = self.text_bytes = 0

  def update(self, documents: int, tokens: int, text_bytes: int, input_bytes: int) -> None:
    self.documents += documents
    self.tokens += tokens
    self.text_bytes += text_bytes
    self.bar.update(tokens if self.by_tokens else input_bytes)
    dt = max(time.perf_counter() - self.start, 1e-9)
    self.bar.set_postfix_str(f"{self.documents / dt:,.0f} docs/s, "
                             f"{self.tokens / dt / 1e6:.2f}M tok/s", refresh=False)

  def close(self) -> None:
    self.bar.close()

  def summary(self, workers: int) -> str:
    dt = max(time.perf_counter() - self.start, 1e-9)
    mb_s, tok_s = self.text_bytes / dt / 1e6, self.tokens / dt
    return (f"{self.documents:,} documents, {self.text_bytes / 1e6:,.1f} MB of text, "
            f"{self.tokens:,} tokens in {dt:.1f} s: {mb_s:.2f} MB/s of text, "
            f"{tok_s:,.0f} tokens/s with {workers} worker(s); "
            f"{mb_s / workers:.2f} MB/s, {tok_s / workers:,.0f} tokens/s per worker")


def check_out_dir(out_dir: str) -> None:
  """Refuses an `out` that is a file, or holds a finished dataset or token files this tool did
  not stage."""
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise PrepareError(f"{out_dir}: a file, not a directory; choose another --out")
  meta_path = os.path.join(out_dir, token_files.META_FILE)
  if os.path.isfile(meta_path):
    raise PrepareError(f"{meta_path}: {out_dir} already holds a prepared dataset; remove the "
                       "directory to remake it, or choose another --out")
  found = token_files.find_shards(out_dir, "train") + token_files.find_shards(out_dir, "val")
  if found:
    raise PrepareError(f"{out_dir}: holds token files without a meta.json ({found[0]}, ...); "
                       "choose an empty --out")


def write_dataset(pieces: Iterable[Piece], out_dir: str, *, name: str, sources: list[str],
                  command: str, val_fraction: float = VAL_FRACTION, val_tokens: int = VAL_TOKENS,
                  max_tokens: int = 0, shard_tokens: int = SHARD_TOKENS, workers: int = 1,
                  total_bytes: int | None = None, progress: bool = True) -> dict:
  """Tokenizes pieces into train/val shards and meta.json; returns the meta.

  `val_tokens` 0 puts no cap on val; `max_tokens` 0 takes the whole corpus,
  otherwise it stops after the document that reaches it. `sources` may fill
  while `pieces` is read: meta.json records it at the end.
  """
  check_out_dir(out_dir)
  made = not os.path.isdir(out_dir)  # removed again, empty, where the run fails
  staging = os.path.join(out_dir, STAGING)
  if os.path.isdir(staging):
    print(f"removing {staging}, the unfinished output of an earlier run", flush=True)
    shutil.rmtree(staging)
  try:
    os.makedirs(staging)
  except OSError as e:
    raise PrepareError(f"{out_dir}: cannot write there ({e.strerror}); choose another --out"
                       ) from None
  put_in: list[str] = []
  try:
    writers = {s: _ShardWriter(staging, name, s, shard_tokens) for s in token_files.SPLITS}
    bar = _Progress(total_bytes, max_tokens, progress)
    _fill(writers, pieces, bar, val_fraction=val_fraction, val_tokens=val_tokens,
          max_tokens=max_tokens, workers=workers)
    bar.close()
    _check_splits(writers, sources, val_fraction)
    for writer in writers.values():
      writer.flush()
    meta = {
        "tokenizer": "gpt2",
        "vocab_size": tokenizer.N_VOCAB,
        "eot_token": tokenizer.EOT_TOKEN,
        "format": "llm.c shards (256 x int32 header, magic 20240520, then uint16 tokens)",
        "splits": {s: {"tokens": w.tokens, "documents": w.documents, "shards": len(w.paths)}
                   for s, w in writers.items()},
        "sources": list(sources),
        "command": command,
    }
    _move_in(writers, out_dir, meta, put_in)
    os.rmdir(staging)
  except BaseException:
    # What this run put in out_dir would read as a whole dataset (a kill here leaves the
    # staging folder, which a run refuses); check_out_dir made sure none was there before.
    for path in put_in:
      with contextlib.suppress(OSError):
        os.remove(path)
    shutil.rmtree(staging, ignore_errors=True)
    if made:
      with contextlib.suppress(OSError):
        os.rmdir(out_dir)
    raise
  if progress:
    print(bar.summary(workers), flush=True)
  return meta


def _move_in(writers: dict[str, _ShardWriter], out_dir: str, meta: dict, put_in: list[str]
             ) -> None:
  """Moves the shards into out_dir, then writes meta.json; `put_in` lists each path before it
  is made, for a stop to take them out again."""
  for writer in writers.values():
    for path in writer.paths:
      put_in.append(os.path.join(out_dir, os.path.basename(path)))
      os.replace(path, put_in[-1])
  put_in.append(os.path.join(out_dir, token_files.META_FILE))
  write_meta(out_dir, meta)


def _fill(writers: dict[str, _ShardWriter], pieces: Iterable[Piece], bar: _Progress, *,
          val_fraction: float, val_tokens: int, max_tokens: int, workers: int) -> None:
  """Tokenizes the pieces and routes each document, whole, to its split, in input order."""
  split = None  # the split of the document being written
  with contextlib.closing(tokenized(pieces, workers)) as results:
    for batch, flat, lengths, text_bytes in results:
      ends = np.cumsum(lengths).tolist()
      documents, tokens, done = 0, 0, False
      for piece, start, end in zip(batch, [0] + ends[:-1], ends):
        if split is None:
          capped = val_tokens and writers["val"].tokens >= val_tokens
          split = "val" if not capped and is_val(piece.doc_id, val_fraction) else "train"
        writers[split].add(flat[start:end])
        tokens = end
        if piece.last:
          writers[split].documents += 1
          documents += 1
          split = None
          done = max_tokens > 0 and sum(w.tokens for w in writers.values()) >= max_tokens
          if done:
            break
      bar.update(documents, tokens, text_bytes, sum(p.nbytes for p in batch))
      if done:
        return


def _check_splits(writers: dict[str, _ShardWriter], sources: list[str],
                  val_fraction: float) -> None:
  what = ", ".join(sources[:3]) + (", ..." if len(sources) > 3 else "") or "the input"
  n_docs = sum(w.documents for w in writers.values())
  if n_docs == 0:
    raise PrepareError(f"{what}: no documents (the corpus is empty)")
  for split, writer in writers.items():
    if writer.documents == 0:
      raise PrepareError(
          f"{what}: no {split} documents among {n_docs} (val_fraction={val_fraction}); "
          "give more documents (for .txt files, --separator splits a file into documents) "
          "or change --val_fraction")
