"""Grain pipeline over token shards: windows, seeded shuffle, batches, prefetch.

A training example is a window of block_size + 1 tokens; consecutive windows
share only their boundary token, so each token is a target once per epoch.
Windows never straddle two shards (the few tokens left at the end of a
shard are skipped).
"""

from __future__ import annotations

import bisect
import os
import re
import signal
import threading
import time
from collections.abc import Iterator

import grain
import numpy as np

from jaxgpt import defaults, formatting, token_files
from jaxgpt.errors import UserError

VOCAB_CHECK_TOKENS = 1 << 20  # of each file, checked at the start: 2 MB of a 200 MB shard


class TokenWindows(grain.sources.RandomAccessDataSource):
  """Random access to the windows of one or more token files, memory-mapped lazily.

  Grain pickles the source into its worker processes: the memmaps are dropped
  from the pickled state and reopened on first use in each worker.
  """

  def __init__(self, paths: list[str], block_size: int):
    self.paths = list(paths)
    self.block_size = block_size
    self.ids_below: int | None = None  # set where no record vouches for the files' ids
    self._tokens: list[np.ndarray] | None = None
    sizes = [len(token_files.read_tokens(path)) for path in self.paths]
    self.n_tokens = sum(sizes)
    counts = [max(0, (n - 1) // block_size) for n in sizes]
    self.offsets = np.concatenate([[0], np.cumsum(counts)]).tolist()
    # A window never spans two files, and a file's windows share their ends (n read n*T + 1
    # tokens): the tail past a file's last window, and a file shorter than one, go unread.
    self.unread = self.n_tokens - sum(c * block_size + 1 for c in counts if c)
    if self.offsets[-1] == 0:
      others = len(self.paths) - 1
      where = self.paths[0] + (f" and {formatting.plural(others, 'other file')}" if others else "")
      raise token_files.ShardError(
          f"{where}: fewer than block_size+1={block_size + 1} tokens in every file (the longest "
          f"holds {max(sizes):,}); lower block_size, or "
          + ("make the data in larger shards (prepare's --shard_tokens)"
             if self.n_tokens > block_size else "give the split more tokens"))

  def __len__(self) -> int:
    return self.offsets[-1]

  def __getitem__(self, index: int) -> np.ndarray:
    if self._tokens is None:
      self._tokens = [token_files.read_tokens(p) for p in self.paths]
    file_index = bisect.bisect_right(self.offsets, index) - 1
    start = (index - self.offsets[file_index]) * self.block_size
    window = np.array(self._tokens[file_index][start:start + self.block_size + 1])
    if self.ids_below is not None and int(window.max()) >= self.ids_below:  # ~1 us a window
      raise IdPastVocab(f"{self.paths[file_index]}: token id {int(window.max())} >= vocab_size "
                        f"{self.ids_below}, past the {VOCAB_CHECK_TOKENS:,} ids of each file "
                        "checked at the start")
    return window

  def __getstate__(self) -> dict:
    state = self.__dict__.copy()
    state["_tokens"] = None
    return state

  def __repr__(self) -> str:
    return f"TokenWindows({len(self.paths)} files, {len(self)} windows of {self.block_size}+1)"


def resolve_data_dir(dataset: str, data_dir: str) -> str:
  """Where a config's token shards are: `data_dir` (a shell leaves `=~/x` as it is), or
  data/<dataset> when it is ''."""
  return os.path.expanduser(data_dir) or os.path.join("data", dataset)


class IdPastVocab(token_files.ShardError):
  """A window's token id past vocab_size, found as it is read (one process: see open_split)."""


def open_splits(data_dir: str, block_size: int, vocab_size: int, *, every_id: bool = False
                ) -> dict[str, TokenWindows]:
  """The train and val windows of a data directory, every file held to the vocabulary as
  `open_split` says (and a model of GPT-2's size against nanoGPT's meta.pkl, a
  character-level vocabulary)."""
  said = token_files.nanogpt_vocab(data_dir)
  if said is not None and said < defaults.GPT2_VOCAB <= vocab_size:
    raise UserError(f"{os.path.join(data_dir, 'meta.pkl')}: nanoGPT's dataset of a "
                    f"{said}-token vocabulary, and the model's is vocab_size={vocab_size}; set "
                    f"--config.vocab_size={said} (as nanoGPT's train.py does), or, to start from "
                    "weights of GPT-2's tokens (init_from), use data made with GPT-2's tokenizer")
  return {split: open_split(data_dir, split, block_size, vocab_size, every_id=every_id)
          for split in token_files.SPLITS}


def open_split(data_dir: str, split: str, block_size: int, vocab_size: int, *,
               every_id: bool = False) -> TokenWindows:
  """The windows of one split, with every file checked against the model's vocabulary: by
  the tokenizer's vocab_size where our meta.json records these files, else id by id, the
  first VOCAB_CHECK_TOKENS of each file now (another tokenizer's ids show there) and each
  window as it is read (reading all of FineWeb-10B's 20 GB would hold up every start), or,
  `every_id`, all of them now: a run of several processes, where the one that read such a
  window would stop alone and leave the others waiting at a collective."""
  paths = token_files.find_shards(data_dir, split)
  if not paths:
    raise UserError(f"{data_dir}: no '{split}' token files (.bin or .npy named {split}.bin, "
                    f"NAME_{split}_N.bin and the like)")
  windows = TokenWindows(paths, block_size)
  written_by = token_files.check_whole(data_dir, split, paths, windows.n_tokens)
  if written_by is None or written_by > vocab_size:  # else ids below vocab_size, unread
    head = None if every_id else VOCAB_CHECK_TOKENS
    for path in paths:
      token_files.check_vocab(path, token_files.read_tokens(path)[:head], vocab_size)
    windows.ids_below = None if every_id else vocab_size
  return windows


def _end_with_parent(worker_index: int, worker_count: int) -> None:
  """Makes a Grain worker process end with the run that started it, and only then.

  A Ctrl-C or a scheduler's SIGTERM reaches every process of the group: the
  workers ignore it, and feed the run until it has saved and closes them (a
  worker it killed would end a run that waits for data with a traceback and no
  checkpoint). A parent killed outright (SIGKILL, the OOM killer) cannot stop
  its workers: they are reparented, and each one watches for that.
  """
  del worker_index, worker_count
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  parent = os.getppid()

  def watch() -> None:
    while os.getppid() == parent:
      time.sleep(0.5)
    os._exit(0)

  threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


class WorkerEnded(UserError):
  """A Grain worker process ended under the run: killed (the OOM killer's pick, say) or crashed."""


def worker_end(error: BaseException) -> str | None:
  """How a worker process ended, where `error` is Grain's for one that ended under the run
  (None for any other error)."""
  found = re.search(r"Worker process was terminated unexpectedly with exit code (-?\d+)",
                    str(error))
  if found is None:
    return None
  code = int(found[1])
  if code >= 0:
    return f"exit code {code}"
  try:
    name = signal.Signals(-code).name
  except ValueError:
    name = f"signal {-code}"
  return f"killed by {name}" + (": the OOM killer's, say" if name == "SIGKILL" else "")


def _windows_stream(source: TokenWindows, seed: int, shard_index: int, shard_count: int,
                    start: int = 0) -> grain.MapDataset:
  """The endless, per-epoch-reshuffled window stream from window `start`, or a process's share.

  Process p of P takes windows start+p, start+p+P, ... of the one global stream,
  so the processes read disjoint windows and together see what one process
  would. An iteration of W windows in all moves the stream's position by W,
  whatever the batch layout.
  """
  ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat()
  if start:
    ds = ds[start:]
  return ds[shard_index::shard_count] if shard_count > 1 else ds


def train_dataset(source: TokenWindows, *, accum_steps: int, batch_size: int, seed: int,
                  workers: int, prefetch: int = 2, shard_index: int = 0, shard_count: int = 1,
                  start_window: int = 0) -> grain.IterDataset:
  """Endless (accum_steps, batch_size, block_size+1) uint16 batches, reshuffled every epoch.

  `batch_size` is this process's share of the micro-batch. `prefetch` batches
  are read ahead by background threads (and by each of `workers` processes
  when > 0). The iterator it gives is checkpointable (`get_state`/`set_state`), so a resumed
  run continues at exactly the next batch; a run resumed with another batch
  layout starts a new iterator at the window it had reached (`start_window`).
  """
  ds = (_windows_stream(source, seed, shard_index, shard_count, start_window)
        .batch(batch_size, drop_remainder=True)
        .batch(accum_steps, drop_remainder=True))
  # Grain's default read-ahead is 500 elements, here 500 iterations' batches: `prefetch` instead.
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=prefetch,
                                               prefetch_buffer_size=prefetch))
  if workers > 0:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers),
                              worker_init_fn=_end_with_parent)
  return grain.experimental.ThreadPrefetchIterDataset(it_ds, prefetch_buffer_size=prefetch)


def stream_windows(source: TokenWindows, seed: int, start: int, stop: int) -> np.ndarray:
  """Windows start..stop of the global stream `eval_batches` reads, as one (n, block+1) array."""
  stream = _windows_stream(source, seed, 0, 1)
  return np.stack([stream[i] for i in range(start, stop)])


def eval_seed(seed: int, split: str) -> int:
  """The shuffle an evaluation draws `split`'s windows by. The train split's is none of
  training's, whose first windows they would be (the loss of what the first iterations of an
  epoch trained on): Grain shuffles epoch e by seed + e, and no run reaches epoch 2**32 - 1."""
  return seed if split != "train" else (seed - 1) % 2**32


def eval_batches(source: TokenWindows, *, batch_size: int, n_batches: int, seed: int,
                 shard_index: int = 0, shard_count: int = 1) -> Iterator[np.ndarray]:
  """The same `n_batches` (batch_size, block_size+1) uint16 batches at every call.

  Windows are drawn by a fixed-seed shuffle over the whole split, so a large
  split is sampled evenly and every evaluation sees identical tokens.
  """
  ds = _windows_stream(source, seed, shard_index, shard_count).batch(batch_size,
                                                                     drop_remainder=True)
  for i in range(n_batches):
    yield ds[i]
