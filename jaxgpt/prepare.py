"""Corpus -> token shards (llm.c format) plus meta.json.

  python -m jaxgpt.prepare fineweb --out=data/fineweb [--name=sample-10BT | CC-MAIN-2024-10]
      [--edu] [--shards=N] [--max_tokens=N]
  python -m jaxgpt.prepare files --input='corpus/*.parquet' --out=data/mine [--text_field=text]
  python -m jaxgpt.prepare files --input='books/*.txt' --out=data/books [--separator='\\n\\n']

Documents are encoded with GPT-2's `encode_ordinary` and end with the
end-of-text token. A document goes to val when the hash of its id falls under
`val_fraction`, until val holds `val_tokens`; every later document goes to
train. So a small corpus keeps 10% for val and a large one 10M tokens, the
same on every run and never mixed into train.

Streaming: the main process reads documents in batches (parquet by record
batches, text files in chunks), worker processes tokenize them, and results
come back in input order, so the output does not depend on `--workers`; only
a few batches per worker are in flight. A document longer than PIECE_CHARS is
tokenized in pieces cut at a space between two non-spaces, where GPT-2's
pre-tokenizer splits anyway, so its tokens are those of the whole text.

Re-runs: shards are written under `out/.incomplete/` and moved into `out/`
when all are done, then meta.json is written last. A run that stops leaves no
shard the trainer would read, and running the command again starts over
(hub downloads are cached and resume). An `out` that already holds a dataset
is refused, never overwritten.

Built-in corpus: `python_docs`, the Python reference-manual topics that every
CPython ships in `pydoc_data.topics` (about 140k GPT-2 tokens): real English
on every machine, with no download.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import glob
import hashlib
import itertools
import json
import multiprocessing
import os
import re
import shlex
import shutil
import signal
import socket
import sys
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import NamedTuple

import numpy as np
from absl import logging

from jaxgpt import cli, token_files, tokenizer
from jaxgpt.errors import UserError

SHARD_TOKENS = 100_000_000  # tokens per shard file, as llm.c's FineWeb script writes
VAL_FRACTION = 0.1
VAL_TOKENS = 10_000_000
PIECE_CHARS = 1 << 20  # longer documents are tokenized in pieces of about this many characters
BATCH_CHARS = 1 << 20  # characters per task sent to a worker
READ_BYTES = 1 << 20  # text files are read in chunks of this size
STAGING = ".incomplete"
FINEWEB_REPOS = {False: "HuggingFaceFW/fineweb", True: "HuggingFaceFW/fineweb-edu"}
FINEWEB_DATASETS = {"fineweb": False, "fineweb_edu": True}  # config.dataset -> --edu

# A space between two non-spaces: GPT-2's pre-tokenizer always starts a new
# pre-token there, so text cut at such a space tokenizes as the whole does.
_SAFE_CUT = re.compile(r"(?<=\S) (?=\S)")


class PrepareError(UserError, ValueError):
  """Input that cannot be turned into token shards."""


class Piece(NamedTuple):
  """A document, or part of one: `last` marks its end, where the end-of-text token goes."""
  doc_id: str
  text: str
  last: bool
  nbytes: int  # input bytes read since the previous piece (progress)


def is_val(doc_id: str, val_fraction: float) -> bool:
  """Deterministic split: a document is val when the hash of its id falls under the fraction."""
  h = int.from_bytes(hashlib.sha1(doc_id.encode("utf-8")).digest()[:8], "little")
  return h / 2**64 < val_fraction


def pieces_of(doc_id: str, text: str, nbytes: int = 0) -> Iterator[Piece]:
  """The document cut at safe spaces into pieces of about PIECE_CHARS characters."""
  start = 0
  while len(text) - start > PIECE_CHARS:
    cut = _SAFE_CUT.search(text, start + PIECE_CHARS)
    if cut is None:
      break
    yield Piece(doc_id, text[start:cut.start()], False, 0)
    start = cut.start()
  yield Piece(doc_id, text[start:], True, nbytes)


# Readers: one input file -> pieces, failing with a message that names the file.

def read_parquet(path: str, text_field: str) -> Iterator[Piece]:
  """Rows of a parquet file read batch by batch; the `id` column names a row when present.

  Documents without an id are named by file name and position, so the split does not
  change when the corpus moves.
  """
  import pyarrow as pa
  import pyarrow.parquet as pq
  try:
    pf = pq.ParquetFile(path)
  except (pa.ArrowException, OSError) as e:
    raise PrepareError(f"{path}: not a readable parquet file ({e})") from e
  schema = pf.schema_arrow
  if text_field not in schema.names:
    raise PrepareError(f"{path}: no column {text_field!r} (columns: {', '.join(schema.names)}); "
                       "set --text_field")
  kind = schema.field(text_field).type
  if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
    raise PrepareError(f"{path}: column {text_field!r} holds {kind}, not text")
  columns = [text_field] + (["id"] if "id" in schema.names and text_field != "id" else [])
  size, n_rows = os.path.getsize(path), max(pf.metadata.num_rows, 1)
  name = os.path.basename(path)
  row = 0
  for batch in pf.iter_batches(batch_size=1024, columns=columns):
    texts = batch.column(text_field).to_pylist()
    ids = (batch.column("id").to_pylist() if len(columns) == 2 else
           [f"{name}:{row + i}" for i in range(len(texts))])
    for doc_id, text in zip(ids, texts):
      if text is None:
        raise PrepareError(f"{path}: row {row}: {text_field!r} is null")
      nbytes = size * (row + 1) // n_rows - size * row // n_rows  # the file's bytes, row by row
      row += 1
      if text:
        yield from pieces_of(str(doc_id), text, nbytes)


def read_jsonl(path: str, text_field: str) -> Iterator[Piece]:
  """One JSON object per line; its `id` names the document when present."""
  with open(path, "rb") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except ValueError as e:
        raise PrepareError(f"{path}:{lineno}: not a JSON object ({e})") from e
      if not isinstance(record, dict) or text_field not in record:
        raise PrepareError(f"{path}:{lineno}: no field {text_field!r}; set --text_field")
      text = record[text_field]
      if not isinstance(text, str):
        raise PrepareError(f"{path}:{lineno}: {text_field!r} holds "
                           f"{type(text).__name__}, not text")
      if text:
        doc_id = record.get("id", f"{os.path.basename(path)}:{lineno}")
        yield from pieces_of(str(doc_id), text, len(line))


def read_text(path: str, separator: str) -> Iterator[Piece]:
  """UTF-8 text read in chunks: the whole file is one document, or one per `separator`."""
  decoder = codecs.getincrementaldecoder("utf-8")()
  buf, index, opened, pending = "", 0, False, 0
  name = os.path.basename(path)
  doc_id = lambda: f"{name}#{index}" if separator else name
  with open(path, "rb") as f:
    while True:
      raw = f.read(READ_BYTES)
      pending += len(raw)
      try:
        buf += decoder.decode(raw, final=not raw)
      except UnicodeDecodeError as e:
        raise PrepareError(f"{path}: not UTF-8 text ({e})") from e
      if separator:
        *done, buf = buf.split(separator)
        for text in done:
          if text or opened:
            yield from pieces_of(doc_id(), text, pending)
            pending = 0
          index, opened = index + 1, False
      if not raw:
        break
      # The open document's text so far, cut short of a separator that may be only half read.
      while len(buf) > PIECE_CHARS:
        cut = _SAFE_CUT.search(buf, PIECE_CHARS, max(len(buf) - len(separator), 0))
        if cut is None:
          break
        yield Piece(doc_id(), buf[:cut.start()], False, pending)
        buf, opened, pending = buf[cut.start():], True, 0
  if buf or opened:
    yield from pieces_of(doc_id(), buf, pending)


FORMATS = (".parquet", ".jsonl", ".txt")


def read_file(path: str, text_field: str, separator: str) -> Iterator[Piece]:
  """The pieces of one input file, read as its extension says."""
  ext = os.path.splitext(path)[1]
  if ext == ".txt":
    return read_text(path, separator)
  if ext == ".parquet":
    return read_parquet(path, text_field)
  return read_jsonl(path, text_field)


# Tokenizing: batches of pieces, in worker processes, results in input order.

def _batches(pieces: Iterable[Piece]) -> Iterator[list[Piece]]:
  batch, chars = [], 0
  for piece in pieces:
    batch.append(piece)
    chars += len(piece.text)
    if chars >= BATCH_CHARS:
      yield batch
      batch, chars = [], 0
  if batch:
    yield batch


def encode_pieces(texts: list[str], lasts: list[bool]) -> tuple[np.ndarray, np.ndarray, int]:
  """The tokens of all pieces, concatenated, their lengths, and the UTF-8 bytes of the text."""
  enc = tokenizer.gpt2()
  encoded = [enc.encode_ordinary(t) for t in texts]
  for tokens, last in zip(encoded, lasts):
    if last:
      tokens.append(tokenizer.EOT_TOKEN)
  lengths = np.fromiter(map(len, encoded), np.int64, len(encoded))
  flat = np.fromiter(itertools.chain.from_iterable(encoded), np.uint16, int(lengths.sum()))
  return flat, lengths, sum(len(t.encode("utf-8")) for t in texts)


def _init_worker() -> None:
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
  tokenizer.gpt2()


def _tokenized(batches: Iterator[list[Piece]], workers: int
               ) -> Iterator[tuple[list[Piece], np.ndarray, np.ndarray, int]]:
  """(batch, tokens, lengths, text bytes) in input order, with 2 x workers batches in flight."""
  task = lambda b: ([p.text for p in b], [p.last for p in b])
  if workers <= 1:
    for batch in batches:
      yield batch, *encode_pieces(*task(batch))
    return
  # spawn: the caller may hold threads (pyarrow, JAX) that fork would copy mid-flight.
  pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker)
  try:
    in_flight: collections.deque = collections.deque()
    for batch in batches:
      in_flight.append((batch, pool.submit(encode_pieces, *task(batch))))
      if len(in_flight) >= 2 * workers:
        batch, future = in_flight.popleft()
        yield batch, *future.result()
    while in_flight:
      batch, future = in_flight.popleft()
      yield batch, *future.result()
  finally:
    pool.shutdown(wait=True, cancel_futures=True)


class _ShardWriter:
  """Fills one split's shard buffer and writes each shard as it fills."""

  def __init__(self, out_dir: str, name: str, split: str, shard_tokens: int):
    self.out_dir, self.name, self.split = out_dir, name, split
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
      token_files.write_shard(path, self.buffer[:self.filled])
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
    mb_s = self.text_bytes / dt / 1e6
    return (f"{self.documents:,} documents, {self.text_bytes / 1e6:,.1f} MB of text, "
            f"{self.tokens:,} tokens in {dt:.1f} s: {mb_s:.2f} MB/s of text, "
            f"{self.tokens / dt:,.0f} tokens/s with {workers} worker(s); {mb_s / workers:.2f} MB/s, "
            f"{self.tokens / dt / workers:,.0f} tokens/s per worker")


def check_out_dir(out_dir: str) -> None:
  """Refuses an `out` that holds a finished dataset or token files this tool did not stage."""
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
  staging = os.path.join(out_dir, STAGING)
  if os.path.isdir(staging):
    print(f"removing {staging}, the unfinished output of an earlier run", flush=True)
    shutil.rmtree(staging)
  os.makedirs(staging)
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
    for writer in writers.values():
      for path in writer.paths:
        os.replace(path, os.path.join(out_dir, os.path.basename(path)))
    token_files.write_meta(out_dir, meta)
    os.rmdir(staging)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  if progress:
    print(bar.summary(workers), flush=True)
  return meta


def _fill(writers: dict[str, _ShardWriter], pieces: Iterable[Piece], bar: _Progress, *,
          val_fraction: float, val_tokens: int, max_tokens: int, workers: int) -> None:
  """Tokenizes the pieces and routes each document, whole, to its split, in input order."""
  split = None  # the split of the document being written
  with contextlib.closing(_tokenized(_batches(pieces), workers)) as results:
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


# Sources: local files and FineWeb on the Hugging Face hub.

def input_files(patterns: list[str]) -> list[str]:
  """The files the globs match, in order, each once; an unknown format is an error."""
  files: list[str] = []
  for pattern in patterns:
    matched = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True)
                     if os.path.isfile(p))
    if not matched:
      raise PrepareError(f"--input={pattern}: no files match")
    for path in matched:
      if os.path.splitext(path)[1] not in FORMATS:
        raise PrepareError(f"{path}: unknown format (expected {', '.join(FORMATS)})")
      if path not in files:
        files.append(path)
  return files


def prepare_files(patterns: list[str], out_dir: str, *, text_field: str = "text",
                  separator: str = "", **kwargs) -> dict:
  """Local parquet / jsonl / txt files -> shards in out_dir."""
  check_out_dir(out_dir)
  files = input_files(patterns)
  sources: list[str] = []

  def pieces() -> Iterator[Piece]:
    for path in files:
      sources.append(path)
      yield from read_file(path, text_field, separator)

  return write_dataset(pieces(), out_dir, sources=sources,
                       total_bytes=sum(os.path.getsize(p) for p in files), **kwargs)


def fineweb_folder(name: str) -> str:
  """The hub folder of a FineWeb subset: sample-10BT -> sample/10BT, a dump -> data/<dump>."""
  if m := re.fullmatch(r"sample-(\d+BT)", name):
    return f"sample/{m[1]}"
  if re.fullmatch(r"CC-MAIN-\d{4}-\d{2}", name):
    return f"data/{name}"
  raise PrepareError(f"--name={name}: expected a sample (sample-10BT, sample-100BT, "
                     "sample-350BT) or a Common Crawl dump (e.g. CC-MAIN-2024-10)")


def prepare_fineweb(out_dir: str, *, subset: str = "sample-10BT", edu: bool = False,
                    shards_limit: int = 0, **kwargs) -> dict:
  """FineWeb (or FineWeb-Edu) parquet files from the hub -> shards in out_dir.

  Files are downloaded one at a time as reading reaches them (so
  `max_tokens` downloads about what it needs) into the Hugging Face cache
  (HF_HOME), where an interrupted download resumes.
  """
  import huggingface_hub
  from huggingface_hub.errors import EntryNotFoundError
  check_out_dir(out_dir)
  repo, folder = FINEWEB_REPOS[edu], fineweb_folder(subset)
  check_hub_reachable()
  try:
    entries = huggingface_hub.list_repo_tree(repo, path_in_repo=folder, repo_type="dataset")
    files = sorted((e for e in entries if e.path.endswith(".parquet")), key=lambda e: e.path)
  except EntryNotFoundError as e:
    raise PrepareError(f"hf://datasets/{repo}/{folder}: not found (--name={subset})") from e
  if not files:
    raise PrepareError(f"hf://datasets/{repo}/{folder}: no parquet files (--name={subset})")
  if shards_limit:
    files = files[:shards_limit]
  sources: list[str] = []

  def pieces() -> Iterator[Piece]:
    for entry in files:
      sources.append(f"hf://datasets/{repo}/{entry.path}")
      path = huggingface_hub.hf_hub_download(repo, entry.path, repo_type="dataset")
      yield from read_parquet(path, "text")

  return write_dataset(pieces(), out_dir, sources=sources,
                       total_bytes=sum(e.size for e in files), **kwargs)


_OFFLINE_ADVICE = ("Download FineWeb's parquet files where there is a network and run "
                   "`python -m jaxgpt.prepare files --input='DIR/*.parquet' --out=...`, or point "
                   "HF_ENDPOINT at a mirror (with a filled cache, HF_HUB_OFFLINE=1 reads it).")


def check_hub_reachable(timeout_s: float = 10.0) -> None:
  """Fails at once, with what to do, where the Hub cannot be reached.

  huggingface_hub would otherwise retry for tens of seconds and end in a long
  traceback. Behind a proxy (HTTPS_PROXY and the like) the direct probe says
  nothing, so it is skipped.
  """
  from huggingface_hub import constants
  if constants.HF_HUB_OFFLINE:
    raise PrepareError(f"HF_HUB_OFFLINE is set: the Hub is not asked for FineWeb's file list. "
                       f"{_OFFLINE_ADVICE}")
  if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
    return
  url = urllib.parse.urlparse(constants.ENDPOINT)
  port = url.port or (443 if url.scheme == "https" else 80)
  try:
    socket.create_connection((url.hostname, port), timeout=timeout_s).close()
  except OSError as e:
    raise PrepareError(f"the Hugging Face Hub ({constants.ENDPOINT}) is unreachable "
                       f"({e.strerror or e}); nothing was downloaded. {_OFFLINE_ADVICE}") from None


def make_command(dataset: str, data_dir: str) -> str:
  """The command that makes a config's data: FineWeb by name, otherwise local files."""
  out = shlex.quote(data_dir)
  if dataset in FINEWEB_DATASETS:
    edu = " --edu" if FINEWEB_DATASETS[dataset] else ""
    return f"python -m jaxgpt.prepare fineweb{edu} --out={out}"
  return f"python -m jaxgpt.prepare files --input='PATH/*.parquet' --out={out}"


def python_docs_documents() -> Iterator[tuple[str, str]]:
  """The reference-manual topics of the running CPython, one document each."""
  from pydoc_data import topics
  for key in sorted(topics.topics):
    yield key, topics.topics[key]


def ensure_python_docs(out_dir: str) -> None:
  """Makes the built-in corpus's shards once; later runs read the cached files."""
  if token_files.read_meta(out_dir) is not None:
    return
  print(f"tokenizing the built-in python_docs corpus into {out_dir} ...", flush=True)
  pieces = (p for key, text in python_docs_documents() for p in pieces_of(key, text))
  meta = write_dataset(pieces, out_dir, name="python_docs", val_fraction=0.1, val_tokens=0,
                       sources=[f"pydoc_data.topics (Python {sys.version.split()[0]})"],
                       command="jaxgpt.prepare.ensure_python_docs", progress=False)
  print(f"python_docs: {meta['splits']['train']['tokens']:,} train tokens, "
        f"{meta['splits']['val']['tokens']:,} val tokens", flush=True)


def ensure_dataset(dataset: str, data_dir: str, *, auto_prepare: bool) -> None:
  """Makes sure `data_dir` holds train shards before a run opens them.

  The built-in corpus is made on first use; FineWeb is downloaded and
  tokenized only with `auto_prepare`; otherwise a missing dataset is an error
  that prints the command making it.
  """
  if dataset == "python_docs":
    ensure_python_docs(data_dir)
  if token_files.find_shards(data_dir, "train"):
    return
  command = make_command(dataset, data_dir)
  if auto_prepare and dataset in FINEWEB_DATASETS:
    logging.info("no token shards in %s: making them (%s)", data_dir, command)
    prepare_fineweb(data_dir, edu=FINEWEB_DATASETS[dataset],
                    name=os.path.basename(os.path.abspath(data_dir)), command=command,
                    workers=cpu_count())
    return
  auto = ("(or run with --config.auto_prepare=True to make them first), "
          if dataset in FINEWEB_DATASETS else "")
  raise UserError(
      f"no token shards in data_dir={data_dir!r} for dataset={dataset!r}. Make them with:\n"
      f"  {command}\n{auto}or point --config.data_dir at existing train/val .bin or .npy "
      "shards (nanoGPT, llm.c or build-nanogpt).")


def _unescape(separator: str) -> str:
  """`\\n`, `\\t`, `\\r` and `\\\\` as typed on a shell command line."""
  return re.sub(r"\\([ntr\\])", lambda m: {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}[m[1]],
                separator)


def cpu_count() -> int:
  """The cores this process may use."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _define_flags() -> None:
  from absl import flags
  flags.DEFINE_string("out", None, "Directory for the token shards and meta.json.", required=True)
  flags.DEFINE_string("name", "sample-10BT", "fineweb: a sample (sample-10BT, sample-100BT, "
                      "sample-350BT) or a Common Crawl dump such as CC-MAIN-2024-10.")
  flags.DEFINE_bool("edu", False, "fineweb: FineWeb-Edu instead of FineWeb.")
  flags.DEFINE_integer("shards", 0, "fineweb: use only the first N parquet files (0: all).",
                       lower_bound=0)
  flags.DEFINE_list("input", None, "files: globs of .parquet, .jsonl or .txt files.")
  flags.DEFINE_string("text_field", "text", "files: the parquet column / jsonl field of the text.")
  flags.DEFINE_string("separator", "", "files: split .txt files into documents at this string "
                      "(\\n, \\t, \\r escapes work); empty: one document per file.")
  flags.DEFINE_integer("max_tokens", 0, "Stop after the document that reaches this many tokens "
                       "(0: the whole corpus).", lower_bound=0)
  flags.DEFINE_float("val_fraction", VAL_FRACTION, "Share of documents (by a hash of their id) "
                     "that go to val, until val holds --val_tokens.", lower_bound=0, upper_bound=1)
  flags.DEFINE_integer("val_tokens", VAL_TOKENS, "Cap on val tokens; later documents all go to "
                       "train (0: no cap).", lower_bound=0)
  flags.DEFINE_integer("workers", cpu_count(), "Tokenizer processes (default: all cores).",
                       lower_bound=1)
  flags.DEFINE_integer("shard_tokens", SHARD_TOKENS, "Tokens per shard file.", lower_bound=1)


SOURCE_FLAGS = {"fineweb": ("name", "edu", "shards"),
                "files": ("input", "text_field", "separator")}


def main(argv: list[str]) -> None:
  from absl import app, flags
  f = flags.FLAGS
  if len(argv) != 2 or argv[1] not in SOURCE_FLAGS:
    raise app.UsageError(f"usage: python -m jaxgpt.prepare {{{'|'.join(SOURCE_FLAGS)}}} "
                         "--out=DIR [flags]")
  source = argv[1]
  for other, names in SOURCE_FLAGS.items():
    for flag_name in names:
      if other != source and f[flag_name].present:
        raise app.UsageError(f"--{flag_name} applies to `{other}`, not `{source}`")
  common = {"name": os.path.basename(os.path.abspath(f.out)),
            "command": "python -m jaxgpt.prepare " + shlex.join(sys.argv[1:]),
            "val_fraction": f.val_fraction, "val_tokens": f.val_tokens,
            "max_tokens": f.max_tokens, "shard_tokens": f.shard_tokens, "workers": f.workers}
  if source == "fineweb":
    meta = prepare_fineweb(f.out, subset=f.name, edu=f.edu, shards_limit=f.shards, **common)
  else:
    if not f.input:
      raise app.UsageError("files: --input is required")
    meta = prepare_files(f.input, f.out, text_field=f.text_field,
                         separator=_unescape(f.separator), **common)
  splits = meta["splits"]
  print(f"wrote {f.out}: train {splits['train']['tokens']:,} tokens "
        f"({splits['train']['shards']} shards), val {splits['val']['tokens']:,} tokens "
        f"({splits['val']['shards']} shards)")


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
