"""Optional sinks: TensorBoard files its reader parses, W&B calls, a missing library, the line."""

from __future__ import annotations

import glob
import io
import os
import sys
import types

import pytest
from absl import logging
from conftest import tiny_config

from jaxgpt import run_dir, sinks, train
from jaxgpt.errors import UserError

TRAIN_RECORD = {"event": "train", "iter": 9, "tokens": 1280, "loss": 2.5, "lr": 1e-3,
                "grad_norm": 0.5, "ms_per_iter": 250.0, "tokens_per_sec": 512.0, "mfu": None}


def test_tensorboard_events_parse_with_tensorboards_reader(tmp_path, token_dir):
  pytest.importorskip("tensorboardX")
  event_accumulator = pytest.importorskip(
      "tensorboard.backend.event_processing.event_accumulator")
  config = tiny_config(tmp_path, token_dir, max_iters=4, eval_interval=2, tensorboard_log=True)
  losses = train.train(config)
  log_dir = os.path.join(config.out_dir, "tensorboard")
  assert glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))
  reader = event_accumulator.EventAccumulator(log_dir)
  reader.Reload()
  assert {"train/loss", "train/lr", "train/tokens_per_sec", "eval/val_loss",
          "eval/train_loss"} <= set(reader.Tags()["scalars"])
  assert "train/mfu" not in reader.Tags()["scalars"]  # None on CPU: not a number
  assert [e.step for e in reader.Scalars("train/loss")] == [0, 1, 2, 3]
  val = reader.Scalars("eval/val_loss")
  assert [e.step for e in val] == [0, 2, 4]
  assert val[-1].value == pytest.approx(losses["val"], rel=1e-6)


class FakeWandb(types.ModuleType):
  """Records what the sink asks of wandb."""

  def __init__(self):
    super().__init__("wandb")
    self.calls = []

  def init(self, **kwargs):
    self.calls.append(("init", kwargs))
    fake = self

    class Run:
      def log(self, data, step):
        fake.calls.append(("log", data, step))

      def finish(self):
        fake.calls.append(("finish",))

    return Run()


def test_wandb_gets_nanogpts_keys_and_every_record(tmp_path, monkeypatch):
  fake = FakeWandb()
  monkeypatch.setitem(sys.modules, "wandb", fake)
  config = tiny_config(tmp_path, "", wandb_log=True, wandb_project="proj", wandb_run_name="r1")
  out = sinks.open_sinks(config, run_dir.RunDir(config.out_dir))
  out.write({"event": "eval", "iter": 0, "tokens": 0, "train_loss": 4.6, "val_loss": 4.7,
             "lr": 0.0})
  out.write(TRAIN_RECORD)
  out.close()
  init = fake.calls[0]
  assert init[0] == "init" and init[1]["project"] == "proj" and init[1]["name"] == "r1"
  assert init[1]["config"]["n_layer"] == 2
  assert fake.calls[1] == ("log", {"eval/tokens": 0.0, "eval/train_loss": 4.6,
                                   "eval/val_loss": 4.7, "eval/lr": 0.0}, 0)
  assert fake.calls[2][2] == 9 and fake.calls[2][1]["train/loss"] == 2.5
  assert fake.calls[-1] == ("finish",)
  assert os.path.isfile(os.path.join(config.out_dir, "metrics.jsonl"))


@pytest.mark.parametrize("key,package", [("wandb_log", "wandb"),
                                         ("tensorboard_log", "tensorboardX")])
def test_a_missing_library_is_a_clear_error_before_anything_opens(tmp_path, monkeypatch, key,
                                                                  package):
  monkeypatch.setitem(sys.modules, package, None)  # makes `import package` fail
  config = tiny_config(tmp_path, "", **{key: True})
  with pytest.raises(UserError, match=rf"config.{key}=True needs the '{package}' package"):
    sinks.open_sinks(config, run_dir.RunDir(config.out_dir))
  assert not os.path.exists(os.path.join(config.out_dir, "metrics.jsonl"))


class Terminal(io.StringIO):
  def isatty(self) -> bool:
    return True


def test_progress_bar_is_silent_off_a_terminal():
  stream = io.StringIO()
  bar = sinks.ProgressBar(100, stream=stream)
  bar.write(TRAIN_RECORD)
  bar.close()
  assert stream.getvalue() == ""


@pytest.fixture
def absl_to(monkeypatch):
  """Sends absl's log lines to a stream through its own handler, as under `app.run`."""
  handler = logging.get_absl_handler()
  logging.get_absl_logger().addHandler(handler)
  yield lambda stream: monkeypatch.setattr(handler.python_handler, "stream", stream)
  logging.get_absl_logger().removeHandler(handler)


def test_progress_bar_on_a_terminal_and_cleared_for_log_lines(absl_to):
  stream = Terminal()
  absl_to(stream)
  bar = sinks.ProgressBar(100, start_iter=5, stream=stream)
  bar.write({"event": "eval", "iter": 0, "val_loss": 3.0})
  bar.write(TRAIN_RECORD)
  assert "10/100" in stream.getvalue() and "loss 2.5000, 512 tok/s" in stream.getvalue()
  logging.warning("a log line")
  shown = stream.getvalue()
  assert "a log line\n" in shown
  assert shown.rindex("10/100") > shown.index("a log line")  # the bar is drawn again below
  bar.write({**TRAIN_RECORD, "iter": 19, "mfu": 0.41})
  assert "20/100" in stream.getvalue() and "MFU 41.0%" in stream.getvalue()
  bar.close()
  assert logging.get_absl_handler().python_handler.stream is stream  # restored
