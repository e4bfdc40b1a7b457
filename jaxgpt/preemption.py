"""Stop requests: SIGTERM (a scheduler's preemption) or Ctrl-C end the run after a step.

With one process, Python handlers set a flag that the loop reads. With
several, each process would see the signal at its own step and save there,
and the others' collectives would hang; JAX's preemption service (started by
`jax.distributed.initialize`) already catches SIGTERM and agrees on one step
for every process, so the loop asks it (`reached_preemption_sync_point`), and
Ctrl-C is forwarded to it as SIGTERM.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import NoReturn

from absl import logging

_AFTER_TRAINING = "received %s after training: ending as soon as the run has closed"
_NOTHING_TO_SAVE = "stopped by {} before the first step: nothing to save"
_early: list[int] = []  # signals received while the libraries loaded
_raised = False  # a handler raised into the work under way: see `raised_into_work`


def raised_into_work() -> bool:
  """Whether a handler here raised into the main thread's work. What it interrupted may go on:
  XLA's compile, left by the exception, runs on in threads of its own, and Python's
  finalization under them crashes the process (SIGSEGV); `cli` then ends without it."""
  return _raised


def _raise(error: BaseException) -> NoReturn:
  global _raised
  _raised = True
  raise error


def send_again(signum: int) -> None:
  """The signal of a stop whose exception Python dropped, sent again 50 ms on to be raised
  where it is not. A handler's exception raised in a garbage collector's callback (JAX runs one
  at every collection) is printed and dropped, and the stop with it: a Ctrl-C in python_docs'
  prep had the run train to its end. `cli`'s unraisable hook calls this."""
  resend = threading.Timer(0.05, _resend, (signum,))
  resend.daemon = True
  resend.start()


def _resend(signum: int) -> None:
  """`signum` again, where a handler of ours still waits for it: not where the work it was to
  stop has ended and given the signal back its default (`cli.sigterm_stops`), which would end
  a command that did its work as one that failed."""
  if callable(signal.getsignal(signum)):
    os.kill(os.getpid(), signum)


class StopBeforeTraining(KeyboardInterrupt):
  """A stop request before the loop began: there is nothing to save, so the run ends at once
  (making data or loading weights unwinds as from a Ctrl-C); `cli.run` says so in one line."""

  def __init__(self, message: str, signum: int = signal.SIGINT):
    super().__init__(message)
    self.signum = signum  # for `send_again`


def catch_early() -> None:
  """Keeps SIGTERM and Ctrl-C that arrive while the libraries load (seconds), instead of
  killing the process (exit 143) or printing a traceback.

  Called first thing by launch.py; `handle_stops_until_training` acts on them.
  """
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda signum, frame: _early.append(signum))


_trained = False  # the loop's StopSignals have been in place


def handle_stops_until_training(processes: int = 1) -> None:
  """From now until the loop's `StopSignals`, SIGTERM and Ctrl-C end a one-process run at once
  (data preparation and weight loading can take hours and have nothing to save); one that
  came while the libraries loaded does so now.

  With several processes, Ctrl-C goes to JAX's preemption service as SIGTERM (see the module),
  so all stop together at the first step. After training a signal is only logged.
  """
  def stop(signum: int, frame) -> None:
    name = signal.Signals(signum).name
    if _trained:
      logging.warning(_AFTER_TRAINING, name)
    elif processes > 1:
      os.kill(os.getpid(), signal.SIGTERM)
    else:
      _raise(StopBeforeTraining(_NOTHING_TO_SAVE.format(name), signum))

  for sig in (signal.SIGTERM, signal.SIGINT) if processes == 1 else (signal.SIGINT,):
    signal.signal(sig, stop)
  if _early:
    stop(_early.pop(0), None)


class StopAtEnd(BaseException):
  """A stop request while a finished run closes (its last checkpoint saved): what is left, a
  closing sample say, is cut short. No Exception, which a broad `except` would take."""


class StopSignals:
  """Turns SIGTERM/SIGINT into a request to stop after the current step.

  A second SIGINT interrupts as Ctrl-C usually does: once the host's wait for the step under
  way ends (Python raises it between bytecodes: a CPU step holds it minutes). Once the loop is over
  (`closing`), a stop request raises StopAtEnd in a one-process run.
  """

  def __init__(self, processes: int = 1, evaluates_only: bool = False):
    self.processes = processes
    self.evaluates_only = evaluates_only  # eval_only: a stop saves nothing, skips what is left
    self.received: int | None = None
    self.closing = False
    self._previous = {}
    self._first: int | None = None  # the iteration of the first `stop_at`

  def __enter__(self) -> StopSignals:  # noqa: PYI034 - a final class
    global _trained
    _trained = True
    for sig in (signal.SIGTERM, signal.SIGINT) if self.processes == 1 else (signal.SIGINT,):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def stop_at(self, it: int) -> bool:
    """Whether to stop before iteration `it`; every process calls it at every iteration.

    JAX's service counts steps from 0 and stops at one past the highest any
    process reported, so it is handed the iterations of this run (1, 2, ...),
    not `it`: a notice before the loop (in a resumed run's start-up, at
    iteration 5,000, say) then stops at the first, where with `it` it never
    stopped.
    """
    if self._first is None:
      self._first = it
    if self.processes > 1:
      from jax.experimental import multihost_utils
      return multihost_utils.reached_preemption_sync_point(it - self._first + 1)
    return self.received is not None

  @property
  def stopped_alone(self) -> bool:
    """A one-process run got a stop (several processes learn of one at `stop_at` alone)."""
    return self.received is not None and self.processes == 1

  def end_a_start_up_stopped(self) -> None:
    """Ends a one-process run whose start-up a stop came in (it waited for the work under way,
    a compile say): nothing to save, and nothing written yet."""
    if self.stopped_alone:
      raise StopBeforeTraining(_NOTHING_TO_SAVE.format(self.name) + ", and the run directory "
                               "as it was")

  @property
  def name(self) -> str:
    if self.received is not None:
      return signal.Signals(self.received).name
    return "a preemption notice (SIGTERM to one of the processes)"

  def _handle(self, signum: int, frame) -> None:
    if self.received == signal.SIGINT and signum == signal.SIGINT:
      _raise(KeyboardInterrupt())
    self.received = signum
    if self.closing and self.processes > 1:  # the others would wait for it in a collective
      logging.warning(_AFTER_TRAINING, self.name)
      return
    if self.closing:
      _raise(StopAtEnd(self.name))
    if self.evaluates_only:
      logging.warning("received %s: eval_only saves nothing, so the run ends once the start-up "
                      "or evaluation under way is done", self.name)
    elif self._first is None:  # the loop has not begun: its start-up (a compile, say) goes on
      logging.warning("received %s: stopping before the first step, once the start-up work "
                      "under way (a compile, say) is done", self.name)
    else:
      logging.warning("received %s: stopping once the step the device is running and the one "
                      "queued behind it are done (at most two)%s, then saving%s", self.name,
                      ", or the evaluation under way" if self.processes == 1 else "",
                      "; Ctrl-C again stops after the step under way, beginning no save (a "
                      "save under way may land)" if signum == signal.SIGINT else "")
    if self.processes > 1:
      os.kill(os.getpid(), signal.SIGTERM)  # to JAX's preemption service, which tells the rest
