"""Stop requests: SIGTERM (a scheduler's preemption) or Ctrl-C end the run after the current step."""

from __future__ import annotations

import signal

from absl import logging


class StopSignals:
  """Turns SIGTERM/SIGINT into a request to stop after the current step.

  A second SIGINT interrupts at once, as Ctrl-C usually does.
  """

  def __init__(self):
    self.received: int | None = None
    self._previous = {}

  def __enter__(self) -> StopSignals:  # noqa: PYI034 - a final class
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  @property
  def name(self) -> str:
    return signal.Signals(self.received).name

  def _handle(self, signum: int, frame) -> None:
    if self.received == signal.SIGINT and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.received = signum
    logging.warning("received %s: stopping after the current step", self.name)
