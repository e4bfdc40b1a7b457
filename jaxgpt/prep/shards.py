"""Documents to a dataset directory: train/val llm.c shards plus meta.json, written safely.

How documents are split and why a directory with meta.json is complete:
docs/design.md, "Token shard formats". The val cap means a small corpus keeps
10% for val and a large one 10M tokens, the same on every run.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from absl import logging

from jaxgpt import errors, token_files, tokenizer
from jaxgpt.prep.readers import Piece, PrepareError
from jaxgpt.prep.tokenize import tokenized

SHARD_TOKENS = 100_000_000  # tokens per shard file, as llm.c's FineWeb script writes
VAL_FRACTION = 0.1
VAL_TOKENS = 10_000_000
STAGING = ".incomplete"
MOVING_IN = "moving_in"  # in STAGING while the shards move into out: their names
LOCK_FILE = ".prepare.lock"
# What marks a training run's out_dir (run_dir.py, which this light command does not import).
RUN_FILES = ("checkpoints", "metrics.jsonl")
LOCK_POLL_S = 0.5  # how often a wait for another process's lock tries it again
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
  with _written(tmp, path):
    with open(tmp, "wb") as f:
      f.write(header.tobytes())
      f.write(np.ascontiguousarray(tokens, dtype="<u2").data)  # no copy of a uint16 array
    os.replace(tmp, path)


def write_meta(data_dir: str, meta: dict[str, Any]) -> None:
  tmp = os.path.join(data_dir, f".{token_files.META_FILE}.tmp")
  path = os.path.join(data_dir, token_files.META_FILE)
  with _written(tmp, path):
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(meta, f, indent=2)
    os.replace(tmp, path)


@contextlib.contextmanager
def _written(tmp: str, path: str) -> Iterator[None]:
  """A full disk or a file-size limit is one error naming `path`, and leaves no `tmp` behind."""
  try:
    yield
  except OSError as e:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise PrepareError(f"{path}: cannot write it ({e.strerror or e})") from e


def is_val(doc_id: str, val_fraction: float) -> bool:
  """Deterministic split: a document is val when the hash of its id falls under the fraction."""
  # surrogateescape: a file name that is not UTF-8 (Latin-1, say) hashes as its own bytes.
  h = int.from_bytes(hashlib.sha1(doc_id.encode("utf-8", "surrogateescape")).digest()[:8],
                     "little")
  return h / 2**64 < val_fraction


class _ShardWriter:
  """Fills one split's shard buffer and writes each shard as it fills."""

  def __init__(self, out_dir: str, prefix: str, split: str, shard_tokens: int):
    # A leading dot would hide the shards: token readers skip dotfiles, as they skip staging.
    self.out_dir, self.prefix, self.split = out_dir, prefix.lstrip(".") or "data", split
    try:
      self.buffer = np.empty(shard_tokens, np.uint16)  # pages are touched only as tokens arrive
    except MemoryError:  # an address-space limit (ulimit -v) below two shards
      raise PrepareError(f"--shard_tokens={shard_tokens:,}: no memory for a shard's buffer "
                         f"({2 * shard_tokens / 2**30:.1f} GiB per split); lower it") from None
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
      path = os.path.join(self.out_dir, f"{self.prefix}_{self.split}_{len(self.paths):06d}.bin")
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
  """Refuses an `out` that is a file, or holds a training run, a finished dataset, token files
  this tool did not stage, or files of the user's in its staging folder."""
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise PrepareError(f"{out_dir}: a file, not a directory; choose another --out")
  meta_path = os.path.join(out_dir, token_files.META_FILE)
  if os.path.isfile(meta_path):
    raise PrepareError(f"{meta_path}: {out_dir} already holds a prepared dataset; remove its "
                       "meta.json and token files to remake it, or choose another --out")
  run = [name for name in RUN_FILES if os.path.lexists(os.path.join(out_dir, name))]
  if run:
    raise PrepareError(f"{out_dir}: holds a training run ({run[0]}), which token files there "
                       "would stop from resuming (a run shares no folder with its data); "
                       "choose another --out")
  found = token_files.find_shards(out_dir, "train") + token_files.find_shards(out_dir, "val")
  left = moved_in(out_dir)  # by a prepare killed here: taken out by the next
  found = [path for path in found if os.path.basename(path) not in left]
  if found:
    raise PrepareError(f"{out_dir}: holds token files without a meta.json ({found[0]}, ...); "
                       "choose an empty --out")
  staging = os.path.join(out_dir, STAGING)
  if os.path.islink(staging) or (os.path.lexists(staging) and not os.path.isdir(staging)):
    raise _in_the_way(staging, "stages shards")
  if os.path.isdir(staging):  # an earlier run's, removed by this one
    _check_staged_only(staging)


def _in_the_way(path: str, job: str, detail: str = "") -> PrepareError:
  """Refuses a link, file or folder of the user's where prepare does a `job` (stages shards,
  keeps its lock): prepare never makes one there, and would empty or remove it."""
  what = "a link" if os.path.islink(path) else "a folder" if os.path.isdir(path) else "a file"
  return PrepareError(f"{path}: {what} of its own{detail}, where prepare {job}; move it, or make "
                      "the data in another folder")


def write_dataset(pieces: Iterable[Piece], out_dir: str, *, prefix: str, sources: list[str],
                  command: str, val_fraction: float = VAL_FRACTION, val_tokens: int = VAL_TOKENS,
                  max_tokens: int = 0, shard_tokens: int = SHARD_TOKENS, workers: int = 1,
                  total_bytes: int | None = None, progress: bool = True) -> dict:
  """Tokenizes pieces into train/val shards and meta.json; returns the meta.

  Shards are named `{prefix}_{split}_{index:06d}.bin`. `val_tokens` 0 puts no
  cap on val; `max_tokens` 0 takes the whole corpus, otherwise it stops after
  the document that reaches it. `sources` may fill while `pieces` is read:
  meta.json records those its documents came from.
  One process at a time writes to `out_dir` (`write_lock`).
  """
  check_out_dir(out_dir)
  with _writing_into(out_dir):
    staging = os.path.join(out_dir, STAGING)
    if os.path.isdir(staging):  # its writer has ended: it held the lock
      _remove_unfinished(out_dir)
    try:
      os.makedirs(staging)
    except OSError as e:
      raise PrepareError(f"{out_dir}: cannot write there ({e.strerror}); choose another --out"
                         ) from None
    put_in: list[str] = []
    try:
      writers = {s: _ShardWriter(staging, prefix, s, shard_tokens) for s in token_files.SPLITS}
      bar = _Progress(total_bytes, max_tokens, progress)
      used = _fill(writers, pieces, sources, bar, val_fraction=val_fraction,
                   val_tokens=val_tokens, max_tokens=max_tokens, workers=workers)
      bar.close()
      _check_splits(writers, sources, val_fraction, max_tokens)
      for writer in writers.values():
        writer.flush()
      meta = {
          "tokenizer": "gpt2",
          "vocab_size": tokenizer.N_VOCAB,
          "eot_token": tokenizer.EOT_TOKEN,
          "format": "llm.c shards (256 x int32 header, magic 20240520, then uint16 tokens)",
          "splits": {s: {"tokens": w.tokens, "documents": w.documents, "shards": len(w.paths)}
                     for s, w in writers.items()},
          "sources": sources[:used],
          "command": command,
      }
      _move_in(writers, out_dir, meta, put_in)
      os.remove(os.path.join(staging, MOVING_IN))
      os.rmdir(staging)
    except BaseException:
      # What this run put in out_dir would read as a whole dataset (a kill here leaves the
      # staging folder, which a run refuses); check_out_dir made sure none was there before.
      for path in put_in:
        with contextlib.suppress(OSError):
          os.remove(path)
      shutil.rmtree(staging, ignore_errors=True)
      raise
  if progress:
    print(bar.summary(workers), flush=True)
  return meta


def _remove_unfinished(out_dir: str) -> None:
  """Takes out an earlier run's staging folder, and the shards it had moved in if it was
  killed while it moved them (`moved_in`), saying so."""
  staging, left = os.path.join(out_dir, STAGING), sorted(moved_in(out_dir))
  shards = (f" and the {len(left)} shard{'s' * (len(left) > 1)} it had moved in ("
            f"{', '.join(left[:2])}{', ...' * (len(left) > 2)})" if left else "")
  print(f"removing {staging}{shards}, the unfinished output of an earlier run", flush=True)
  for name in left:
    os.remove(os.path.join(out_dir, name))
  shutil.rmtree(staging)


# What a prepare stages: _ShardWriter's shards (of any --out name), write_shard's temporaries,
# the list of shards it moves in.
_STAGED = re.compile(rf".*_(train|val)_\d{{6,}}\.bin(\.tmp\d+)?|{MOVING_IN}", re.DOTALL)


def _check_staged_only(staging: str) -> None:
  """Refuses to remove a staging folder holding anything a prepare does not write there."""
  theirs = sorted(n for n in os.listdir(staging) if not _STAGED.fullmatch(n))
  if theirs:
    raise PrepareError(f"{staging}: holds files prepare does not write ({', '.join(theirs[:3])}"
                       f"{', ...' * (len(theirs) > 3)}), in the folder where it stages shards; "
                       "move them, or make the data in another folder")


@contextlib.contextmanager
def _writing_into(out_dir: str) -> Iterator[None]:
  """Holds out_dir's `write_lock` while a dataset is written there; a run that fails takes out
  the directory it made, with the lock file, or the lock file it made in a folder of the user's
  (where `rmdir` failed on a folder `ls` shows empty)."""
  made = errors.missing_folders(out_dir)
  lock_made = not made and not os.path.lexists(os.path.join(out_dir, LOCK_FILE))
  with write_lock(out_dir, wait=False) as lockless:
    if lockless:
      logging.warning("%s: cannot lock it (%s); writing there unguarded: run one prepare at a "
                      "time there", out_dir, lockless)
    try:
      check_out_dir(out_dir)  # again, locked: the prepare that held the lock may have finished
      yield
    except BaseException:
      remove_locked_dir(made)
      if lock_made:  # held until the fd closes; a waiter finds it gone and opens a new one
        with contextlib.suppress(OSError):
          os.remove(os.path.join(out_dir, LOCK_FILE))
      raise


def remove_locked_dir(made: list[str]) -> None:
  """Removes the folders this process made (`missing_folders`, innermost first: an out_dir and
  the folders above it) with the lock file it holds in the first, where nothing else is in
  them: a prepare that failed leaves no trace."""
  if not made:
    return
  with contextlib.suppress(OSError):
    os.remove(os.path.join(made[0], LOCK_FILE))
    for folder in made:
      os.rmdir(folder)


_held: set[str] = set()  # the real paths of the out dirs whose write_lock this process holds


@contextlib.contextmanager
def write_lock(out_dir: str, *, wait: bool) -> Iterator[str | None]:
  """Holds `out_dir`/.prepare.lock, an flock the OS drops however its holder ends, so that one
  process at a time writes a dataset there: another waits (`wait`: the processes of one run,
  which then read what the first made) or fails at once, naming the holder.

  Yields None, or why the filesystem has no locks (Lustre mounted without flock, say): the
  caller refuses or goes on unguarded. A lock this process holds already (`datasets.ensure`'s,
  around `write_dataset`) is not taken again: an flock through a second open() of the file
  would wait for the first.
  """
  key = os.path.realpath(out_dir)
  if key in _held:
    yield None
    return
  try:
    fd, lockless = _locked_fd(out_dir, wait), None
  except _NoLocks as e:
    lockless = str(e)
  else:
    _held.add(key)
  try:
    yield lockless
  finally:
    if lockless is None:
      _held.discard(key)
      os.close(fd)


class _NoLocks(Exception):
  """The filesystem refuses flock; the message says why."""


def _locked_fd(out_dir: str, wait: bool) -> int:
  """The lock file open and flocked, its holder's pid written in it.

  Locked, the file is checked to be still in place: a holder that made out_dir removes both
  where it fails, and a process that waited on that file would hold a lock on nothing.
  """
  path = os.path.join(out_dir, LOCK_FILE)
  while True:
    try:
      os.makedirs(out_dir, exist_ok=True)
      # Not through a link: the file it names would be emptied.
      fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
      if os.path.islink(path) or os.path.isdir(path):
        raise _in_the_way(path, "keeps its lock") from None
      why = errors.folder_problem(out_dir, e)
      raise PrepareError(f"{out_dir}: cannot write there ({why})") from None
    try:
      _flock(fd, out_dir, wait)
      if errors.same_file(fd, path):
        previous = os.pread(fd, 64, 0)
        if not re.fullmatch(rb"(\d+\n)?", previous):  # no pid a prepare wrote: the user's
          raise _in_the_way(path, "keeps its lock", f" (it reads {previous[:40]!r})")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd
    except BaseException:
      os.close(fd)
      raise
    os.close(fd)


def _flock(fd: int, out_dir: str, wait: bool) -> None:
  """Locks `fd`; where another holds it, waits or fails naming it (its pid, in the file)."""
  try:
    if _locked(fd):
      return
    if not wait:
      pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
      holder = f" (pid {pid})" if pid.isdigit() else ""
      raise PrepareError(f"{out_dir}: another prepare is writing there{holder}; wait for it to "
                         "end, or choose another --out")
    logging.info("waiting for another process making the data in %s", out_dir)
    # Polled: a Ctrl-C the kernel hands to another thread (JAX's, say) would never interrupt a
    # blocking flock in this one, and the wait would outlast the stop.
    while not _locked(fd):
      time.sleep(LOCK_POLL_S)
  except OSError as e:
    raise _NoLocks(e.strerror or str(e)) from None


def _locked(fd: int) -> bool:
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    return False
  return True


def _noting_sources(pieces: Iterable[Piece], sources: list[str],
                    read_with: collections.deque[int]) -> Iterator[Piece]:
  """The pieces, noting in `read_with` how many sources were read by each: reading runs ahead
  of tokenizing, and `max_tokens` may stop before a source read ahead gives a document."""
  for piece in pieces:
    read_with.append(len(sources))
    yield piece


def _move_in(writers: dict[str, _ShardWriter], out_dir: str, meta: dict, put_in: list[str]
             ) -> None:
  """Moves the shards into out_dir, then writes meta.json; `put_in` lists each path before it
  is made, for a stop to take them out again, and MOVING_IN each name and `_file_id`, for a
  run after a kill (`moved_in`)."""
  paths = [path for writer in writers.values() for path in writer.paths]
  listed = os.path.join(out_dir, STAGING, MOVING_IN)
  files = {os.path.basename(path): _file_id(path) for path in paths}
  with _written(listed, listed), open(listed, "w") as f:
    json.dump(files, f)
  for path in paths:
    put_in.append(os.path.join(out_dir, os.path.basename(path)))
    os.replace(path, put_in[-1])
  put_in.append(os.path.join(out_dir, token_files.META_FILE))
  write_meta(out_dir, meta)


def moved_in(out_dir: str) -> set[str]:
  """The names of the shards a prepare killed while it moved them in left in out_dir (none
  where meta.json says it finished): those its MOVING_IN lists that are the very files it
  moved (not a file put there since under a listed name)."""
  if os.path.lexists(os.path.join(out_dir, token_files.META_FILE)):
    return set()
  try:
    with open(os.path.join(out_dir, STAGING, MOVING_IN)) as f:
      files = json.load(f)  # cut off by the kill: nothing had moved yet
  except (OSError, ValueError):
    return set()
  return {name for name, file in files.items()
          if os.path.basename(name) == name and _file_id(os.path.join(out_dir, name)) == file}


def _file_id(path: str) -> list[int] | None:
  """A regular file's device, inode, size and mtime, which a move keeps and a file made since
  in its place does not (an inode is used again); a link, folder or nothing has none."""
  try:
    info = os.lstat(path)
  except OSError:
    return None
  return [info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns] if stat.S_ISREG(
      info.st_mode) else None


def _fill(writers: dict[str, _ShardWriter], pieces: Iterable[Piece], sources: list[str],
          bar: _Progress, *, val_fraction: float, val_tokens: int, max_tokens: int,
          workers: int) -> int:
  """Tokenizes the pieces and routes each document, whole, to its split, in input order;
  returns how many of `sources` the written pieces came from (`_noting_sources`)."""
  split = None  # the split of the document being written
  used = 0
  read_with: collections.deque[int] = collections.deque()
  noted = _noting_sources(pieces, sources, read_with)
  with contextlib.closing(tokenized(noted, workers)) as results:
    for batch, flat, lengths, text_bytes in results:
      ends = np.cumsum(lengths).tolist()
      documents, tokens, done = 0, 0, False
      for i, (piece, start, end) in enumerate(zip(batch, [0] + ends[:-1], ends)):
        if split is None:
          capped = val_tokens and writers["val"].tokens >= val_tokens
          split = "val" if not capped and is_val(piece.doc_id, val_fraction) else "train"
        writers[split].add(flat[start:end])
        used = read_with.popleft()
        tokens = end
        if piece.last:
          writers[split].documents += 1
          documents += 1
          split = None
          done = max_tokens > 0 and sum(w.tokens for w in writers.values()) >= max_tokens
          if done:  # the summary counts the text written, not the rest of the batch
            text_bytes = sum(len(p.text.encode("utf-8")) for p in batch[:i + 1])
            break
      bar.update(documents, tokens, text_bytes, sum(p.nbytes for p in batch))
      if done:
        break
  return used


def _check_splits(writers: dict[str, _ShardWriter], sources: list[str], val_fraction: float,
                  max_tokens: int) -> None:
  what = ", ".join(sources[:3]) + (", ..." if len(sources) > 3 else "") or "the input"
  n_docs = sum(w.documents for w in writers.values())
  if n_docs == 0:
    raise PrepareError(f"{what}: no documents (the corpus is empty)")
  cut = max_tokens and sum(w.tokens for w in writers.values()) >= max_tokens
  for split, writer in writers.items():
    if writer.documents == 0 and cut:
      raise PrepareError(f"{what}: no {split} documents among the {n_docs} that "
                         f"--max_tokens={max_tokens:,} let in (val_fraction={val_fraction}); "
                         "raise --max_tokens (or change --val_fraction)")
    if writer.documents == 0:
      raise PrepareError(
          f"{what}: no {split} documents among {n_docs} (val_fraction={val_fraction}); "
          "give more documents (for .txt files, --separator splits a file into documents) "
          "or change --val_fraction; documents go to a split by a hash of their 'id', so "
          "those sharing one go together")
