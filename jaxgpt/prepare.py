"""Corpus -> token shards (llm.c format) plus meta.json.

Documents are encoded with GPT-2's `encode_ordinary` and end with the
end-of-text token. Each document goes to train or val by a hash of its id,
so the split is deterministic and never mixes the two.

Built-in corpus: `python_docs`, the Python reference-manual topics that every
CPython ships in `pydoc_data.topics` (about 140k GPT-2 tokens): real English
on every machine, with no download.
"""

from __future__ import annotations

import hashlib
import os
import sys
from typing import Iterable, Iterator

import numpy as np

from jaxgpt import shards, tokenizer

SHARD_TOKENS = 100_000_000  # tokens per shard file, as llm.c's FineWeb script writes


def is_val(doc_id: str, val_fraction: float) -> bool:
  """Deterministic split: a document is val when the hash of its id falls under the fraction."""
  h = int.from_bytes(hashlib.sha1(doc_id.encode("utf-8")).digest()[:8], "little")
  return h / 2**64 < val_fraction


class _ShardWriter:
  """Buffers the tokens of one split and writes full shards as they fill."""

  def __init__(self, out_dir: str, name: str, split: str, shard_tokens: int):
    self.out_dir, self.name, self.split = out_dir, name, split
    self.shard_tokens = shard_tokens
    self.buffer: list[np.ndarray] = []
    self.buffered = 0
    self.n_shards = 0
    self.tokens = 0
    self.documents = 0

  def add(self, tokens: list[int]) -> None:
    self.buffer.append(np.asarray(tokens, dtype=np.uint16))
    self.buffered += len(tokens)
    self.tokens += len(tokens)
    self.documents += 1
    while self.buffered >= self.shard_tokens:
      self._flush(self.shard_tokens)

  def close(self) -> None:
    if self.buffered:
      self._flush(self.buffered)

  def _flush(self, n: int) -> None:
    flat = np.concatenate(self.buffer)
    path = os.path.join(self.out_dir, f"{self.name}_{self.split}_{self.n_shards:06d}.bin")
    shards.write_shard(path, flat[:n])
    self.n_shards += 1
    rest = flat[n:]
    self.buffer = [rest] if rest.size else []
    self.buffered = rest.size


def write_dataset(documents: Iterable[tuple[str, str]], out_dir: str, *, name: str,
                  val_fraction: float, sources: list[str],
                  shard_tokens: int = SHARD_TOKENS) -> dict:
  """Tokenizes (doc_id, text) pairs into train/val shards and meta.json; returns the meta."""
  os.makedirs(out_dir, exist_ok=True)
  writers = {s: _ShardWriter(out_dir, name, s, shard_tokens) for s in shards.SPLITS}
  for doc_id, text in documents:
    split = "val" if is_val(doc_id, val_fraction) else "train"
    writers[split].add(tokenizer.encode_document(text))
  for split, writer in writers.items():
    if writer.tokens == 0:
      raise ValueError(f"{out_dir}: the corpus gave no {split} documents "
                       f"(val_fraction={val_fraction}); it is empty or too small")
    writer.close()
  meta = {
      "tokenizer": "gpt2",
      "vocab_size": tokenizer.N_VOCAB,
      "eot_token": tokenizer.EOT_TOKEN,
      "format": "llm.c shards (256 x int32 header, magic 20240520, then uint16 tokens)",
      "splits": {s: {"tokens": w.tokens, "documents": w.documents, "shards": w.n_shards}
                 for s, w in writers.items()},
      "sources": sources,
      "command": " ".join(sys.argv),
  }
  shards.write_meta(out_dir, meta)
  return meta


def python_docs_documents() -> Iterator[tuple[str, str]]:
  """The reference-manual topics of the running CPython, one document each."""
  from pydoc_data import topics
  for key in sorted(topics.topics):
    yield key, topics.topics[key]


def ensure_python_docs(out_dir: str) -> None:
  """Makes the built-in corpus's shards once; later runs read the cached files."""
  if shards.read_meta(out_dir) is not None:
    return
  print(f"tokenizing the built-in python_docs corpus into {out_dir} ...", flush=True)
  meta = write_dataset(python_docs_documents(), out_dir, name="python_docs", val_fraction=0.1,
                       sources=[f"pydoc_data.topics (Python {sys.version.split()[0]})"])
  print(f"python_docs: {meta['splits']['train']['tokens']:,} train tokens, "
        f"{meta['splits']['val']['tokens']:,} val tokens", flush=True)
