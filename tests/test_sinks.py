"""Optional sinks: TensorBoard files its reader parses, W&B calls, a missing library, the line."""

from __future__ import annotations

import glob
import importlib
import io
import os
import shutil
import sys
import time
import types

import numpy as np
import pytest
from absl import logging
from conftest import checkpoint_steps, read_jsonl, records, tiny_config

from jaxgpt import checkpoint, defaults, run_dir, sinks, train
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


def tensorboard_points(log_dir: str) -> dict[str, list[tuple[int, float]]]:
  """Each tag's (step, value) points as TensorBoard's reader shows them."""
  event_accumulator = pytest.importorskip(
      "tensorboard.backend.event_processing.event_accumulator")
  reader = event_accumulator.EventAccumulator(log_dir)
  reader.Reload()
  return {tag: [(e.step, e.value) for e in reader.Scalars(tag)]
          for tag in reader.Tags()["scalars"]}


def metrics_points(path: str) -> dict[str, list[tuple[int, float]]]:
  """The same from metrics.jsonl's lines, every one, as float32 like TensorBoard's."""
  points: dict[str, list[tuple[int, float]]] = {}
  for record in read_jsonl(path):
    for tag, value in sinks.scalars(record).items():
      points.setdefault(tag, []).append((record["iter"], float(np.float32(value))))
  return points


def test_a_resume_leaves_tensorboard_the_records_metrics_jsonl_keeps(tmp_path, token_dir):
  pytest.importorskip("tensorboardX")
  config = tiny_config(tmp_path, token_dir, max_iters=4, eval_interval=2, tensorboard_log=True)
  train.train(config)
  # A kill before the save of 4 landed: the resume redoes 2 and 3 from the evaluated 2. The
  # event files emptied: whatever they hold, TensorBoard shows what metrics.jsonl keeps.
  rundir = run_dir.RunDir(config.out_dir)
  shutil.rmtree(os.path.join(rundir.checkpoints_dir, "4"))
  for events in glob.glob(os.path.join(rundir.tensorboard_dir, "events.*")):
    os.truncate(events, 0)
  train.train(tiny_config(tmp_path, token_dir, max_iters=4, eval_interval=2,
                          tensorboard_log=True, init_from="resume"))
  shown = tensorboard_points(rundir.tensorboard_dir)
  assert [step for step, _ in shown["train/loss"]] == [0, 1, 2, 3]
  assert [step for step, _ in shown["eval/val_loss"]] == [0, 2, 4]
  assert shown == metrics_points(rundir.metrics_path)


def test_resumes_of_an_unevaluated_checkpoint_keep_one_evaluation_of_it(tmp_path):
  """A stop saved 4 unevaluated; a resume scored 4 and crashed; a second scored it again."""
  pytest.importorskip("tensorboardX")
  rundir = run_dir.RunDir(str(tmp_path / "run"))

  def run(n: int, start: int | None, iters: list[int]) -> None:
    time.sleep(1 - time.time() % 1)  # tensorboardX names a file by the second it opens
    rundir.keep_metrics_until(start, evaluated=False)
    sink_config = defaults.view(sinks.SinkConfig, tiny_config(tmp_path, "", tensorboard_log=True))
    libraries = sinks.start_libraries(sink_config, rundir, {}, False)
    out = sinks.open_sinks(sink_config, rundir, libraries, resumed_at=start)
    if iters[0] % 4 == 0:
      out.write({"event": "eval", "iter": iters[0], "val_loss": n + iters[0] / 10})
      out.write({"event": "tasks", "iter": iters[0], "hellaswag_acc": n / 10})
    for it in iters:
      out.write({**TRAIN_RECORD, "iter": it, "loss": n + it / 10})
    out.close()

  run(1, None, [0, 1, 2, 3])
  run(2, 4, [4, 5])
  run(3, 4, [4])
  kept = [(r["event"], r["iter"]) for r in read_jsonl(rundir.metrics_path)]
  assert kept == ([("eval", 0), ("tasks", 0)] + [("train", i) for i in range(4)]
                  + [("eval", 4), ("tasks", 4), ("train", 4)])
  assert len(read_jsonl(rundir.metrics_path + ".superseded")) == 4  # the first resume's
  shown = tensorboard_points(rundir.tensorboard_dir)
  assert shown["eval/val_loss"] == [(0, pytest.approx(1.0)), (4, pytest.approx(3.4))]
  assert shown == metrics_points(rundir.metrics_path)


def test_a_new_run_sets_an_earlier_runs_records_and_config_aside(tmp_path):
  rundir = run_dir.RunDir(str(tmp_path / "run"))
  os.makedirs(rundir.tensorboard_dir)
  for path, text in [(rundir.metrics_path + ".1", "oldest\n"), (rundir.metrics_path, "old\n"),
                     (os.path.join(rundir.tensorboard_dir, "events.out.tfevents.1"), "events"),
                     (os.path.join(rundir.out_dir, "config.json"), "{}"),
                     (rundir.metrics_path + ".superseded", "redone\n")]:
    with open(path, "w") as f:
      f.write(text)
  rundir.keep_metrics_until(None, evaluated=False)
  assert sorted(os.listdir(rundir.out_dir)) == ["config.json.2", "metrics.jsonl.1",
                                                "metrics.jsonl.2", "metrics.jsonl.superseded.2",
                                                "tensorboard.2"]
  with open(rundir.metrics_path + ".2") as f:
    assert f.read() == "old\n"
  assert os.listdir(rundir.tensorboard_dir + ".2") == ["events.out.tfevents.1"]


def test_a_non_finite_loss_is_written_to_tensorboard_without_its_anonymous_warning(tmp_path,
                                                                                   caplog):
  import tensorboardX
  sink = sinks.TensorBoardSink(tensorboardX, str(tmp_path / "tb"))
  with caplog.at_level("WARNING"):
    sink.write({**TRAIN_RECORD, "loss": float("nan"), "grad_norm": float("inf")})
  sink.close()
  assert "NaN or Inf" not in caplog.text
  shown = tensorboard_points(str(tmp_path / "tb"))
  assert np.isnan(shown["train/loss"][0][1]) and shown["train/grad_norm"] == [(9, float("inf"))]


def test_a_long_runs_records_are_written_again_on_resume_with_one_flush(tmp_path, monkeypatch):
  """A resume at iteration 300,000 of a run logging each one took 80 s here, a flush a record;
  each record of the run itself is flushed (a full disk stops the run at once)."""
  tensorboardX = pytest.importorskip("tensorboardX")
  flushes = []
  real_flush = tensorboardX.event_file_writer.EventsWriter.flush
  monkeypatch.setattr(tensorboardX.event_file_writer.EventsWriter, "flush",
                      lambda self: flushes.append(1) or real_flush(self))
  kept = [{**TRAIN_RECORD, "iter": i} for i in range(1000)]
  sink = sinks.TensorBoardSink(tensorboardX, str(tmp_path / "tb"), kept=kept)
  (events,) = glob.glob(str(tmp_path / "tb" / "events*"))
  written = os.path.getsize(events)  # on disk before the resumed run's first record
  assert len(flushes) == 1 and written > 1000 * 50
  sink.write({**TRAIN_RECORD, "iter": 1000})
  assert len(flushes) == 2 and os.path.getsize(events) > written
  sink.close()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="writes to /dev/full")
def test_a_full_disk_under_tensorboard_fails_the_write_at_once(tmp_path, monkeypatch):
  """As metrics.jsonl's does, so the run stops within a step (not a writer thread that dies
  and leaves the next records waiting for ever)."""
  tensorboardX = pytest.importorskip("tensorboardX")
  monkeypatch.setattr(tensorboardX.record_writer, "open_file",
                      lambda path: open("/dev/full", "wb"))  # noqa: SIM115 - the sink closes it
  sink = sinks.TensorBoardSink(tensorboardX, str(tmp_path / "tb"))
  with pytest.raises(OSError, match="No space left on device"):
    sink.write(TRAIN_RECORD)
  sink.close(failed=True)  # nothing left to flush, and no error to hide the run's own


def test_every_sink_is_closed_though_one_fails_to():
  closed = []

  class Sink:
    def __init__(self, name: str, error: Exception | None = None):
      self.name, self.error = name, error

    def close(self, failed: bool = False) -> None:
      closed.append((self.name, failed))
      if self.error:
        raise self.error

  with pytest.raises(OSError, match="No space left"):
    sinks.Sinks([Sink("metrics.jsonl"), Sink("tensorboard", OSError(28, "No space left")),
                 Sink("wandb")]).close(failed=True)
  assert closed == [("metrics.jsonl", True), ("tensorboard", True), ("wandb", True)]


class FakeWandb(types.ModuleType):
  """Records what the sink asks of wandb; a run it has seen resumes after its last step."""

  def __init__(self):
    super().__init__("wandb")
    self.calls = []
    self.last_step: dict[str, int] = {}  # run id -> the last step it logged

  def init(self, **kwargs):
    self.calls.append(("init", kwargs))
    fake = self
    run_id = kwargs["id"] or f"run{len(self.last_step) + 1}"

    class Run:
      id = run_id
      step = fake.last_step.get(run_id, -1) + 1

      def log(self, data, step):
        assert step >= fake.last_step.get(run_id, -1), "W&B drops steps below its last"
        fake.last_step[run_id] = step
        fake.calls.append(("log", data, step))

      def finish(self, exit_code=None):
        fake.calls.append(("finish", exit_code))

    return Run()


def test_wandb_gets_the_run_s_names_and_every_record(tmp_path, monkeypatch):
  fake = FakeWandb()
  monkeypatch.setitem(sys.modules, "wandb", fake)
  config = tiny_config(tmp_path, "", wandb_log=True, wandb_project="proj", wandb_run_name="r1")
  rundir = run_dir.RunDir(config.out_dir)
  sink_config = defaults.view(sinks.SinkConfig, config)
  out = sinks.open_sinks(sink_config, rundir,
                         sinks.start_libraries(sink_config, rundir, config.to_dict(),
                                                               False))
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
  assert fake.calls[-1] == ("finish", 0)
  assert os.path.isfile(os.path.join(config.out_dir, "metrics.jsonl"))


def test_a_resume_logs_to_the_same_wandb_run_and_sends_no_step_twice(tmp_path, token_dir,
                                                                    monkeypatch):
  fake = FakeWandb()
  monkeypatch.setitem(sys.modules, "wandb", fake)
  config = tiny_config(tmp_path, token_dir, max_iters=4, eval_interval=2, wandb_log=True)
  train.train(config)
  # A crash before the save of 4 landed: the resume redoes 2 and 3, which W&B already has.
  shutil.rmtree(os.path.join(config.out_dir, "checkpoints", "4"))
  train.train(tiny_config(tmp_path, token_dir, max_iters=6, eval_interval=2, wandb_log=True,
                          init_from="resume"))
  inits = [call[1] for call in fake.calls if call[0] == "init"]
  assert [(i["id"], i["resume"]) for i in inits] == [(None, "allow"), ("run1", "allow")]
  assert list(fake.last_step) == ["run1"]
  logged = [call[2] for call in fake.calls if call[0] == "log"]
  assert logged == [0, 0, 1, 2, 2, 3, 4, 5, 6]  # step 4 is closed: its train record is lost
  assert (tmp_path / "run" / "wandb_run_id").read_text() == "run1\n"


def test_a_resume_sends_wandb_the_kept_records_a_kill_kept_from_it(tmp_path, token_dir,
                                                                   monkeypatch):
  """Killed after the evaluation at 2 reached metrics.jsonl but not W&B: the resume from
  checkpoint 2 sent W&B nothing of step 2's evaluation, a hole in its curves for good."""
  fake = FakeWandb()
  monkeypatch.setitem(sys.modules, "wandb", fake)
  config = tiny_config(tmp_path, token_dir, max_iters=4, eval_interval=2, wandb_log=True)
  train.train(config)
  shutil.rmtree(os.path.join(config.out_dir, "checkpoints", "4"))
  fake.last_step["run1"] = 1  # W&B had steps 0 and 1 when the run was killed
  del fake.calls[:]
  train.train(tiny_config(tmp_path, token_dir, max_iters=4, eval_interval=2, wandb_log=True,
                          init_from="resume"))
  logged = [(call[2], min(call[1]).split("/")[0]) for call in fake.calls
            if call[0] == "log"]
  assert logged == [(2, "eval"), (2, "train"), (3, "train"), (4, "eval")]


def test_a_run_trains_on_where_wandb_fails_mid_run(tmp_path, token_dir, monkeypatch, caplog):
  """W&B's service killed mid-run: its log raised out of the loop (no checkpoint, and on
  several hosts the others left waiting), and its finish then hid that error."""
  fake = FakeWandb()
  monkeypatch.setitem(sys.modules, "wandb", fake)
  real_init = fake.init

  def init(**kwargs):
    run = real_init(**kwargs)
    real_log = run.log

    def log(data, step):
      if step >= 2:
        raise ConnectionResetError("Connection lost")
      real_log(data, step)

    run.log, run.finish = log, lambda **_: pytest.fail("finish after W&B failed")
    return run

  fake.init = init
  config = tiny_config(tmp_path, token_dir, max_iters=4, eval_interval=2, wandb_log=True)
  train.train(config)
  assert caplog.text.count("W&B failed") == 1
  assert ("W&B failed at the eval record of iteration 2 (Connection lost): training goes on "
          "without it") in caplog.text
  assert [call[2] for call in fake.calls if call[0] == "log"] == [0, 0, 1]
  assert checkpoint_steps(config.out_dir) == [2, 4]
  assert [r["iter"] for r in records(config.out_dir, "train")] == [0, 1, 2, 3]


def test_a_run_that_fails_is_marked_failed_in_wandb(tmp_path, token_dir, monkeypatch):
  fake = FakeWandb()
  monkeypatch.setitem(sys.modules, "wandb", fake)

  def broken_task(params):
    raise RuntimeError("the task broke")

  with pytest.raises(RuntimeError, match="the task broke"):
    train.train(tiny_config(tmp_path, token_dir, max_iters=2, wandb_log=True),
                hooks=train.Hooks(tasks=broken_task))
  assert fake.calls[-1] == ("finish", 1)


def test_a_final_save_that_fails_marks_the_wandb_run_failed(tmp_path, token_dir, monkeypatch):
  """The loop ended, but the save it waits for at the end failed: the command exits 1, and
  W&B says so."""
  fake = FakeWandb()
  monkeypatch.setitem(sys.modules, "wandb", fake)
  real_close = train._Loop.close

  def close_after_a_failed_save(loop, failed=False):
    def wait(checkpoints):
      raise checkpoint.SaveError("saving the checkpoint of step 2 failed")

    monkeypatch.setattr(checkpoint.Checkpoints, "wait", wait)
    real_close(loop, failed)

  monkeypatch.setattr(train._Loop, "close", close_after_a_failed_save)
  with pytest.raises(checkpoint.SaveError, match="step 2 failed"):
    train.train(tiny_config(tmp_path, token_dir, max_iters=2, wandb_log=True))
  assert fake.calls[-1] == ("finish", 1)


def test_a_start_that_fails_after_wandb_started_marks_its_run_failed(tmp_path, token_dir,
                                                                      monkeypatch):
  fake = FakeWandb()
  monkeypatch.setitem(sys.modules, "wandb", fake)

  def full_disk(rundir, config):
    raise OSError(28, "No space left on device", "config.json")

  monkeypatch.setattr(run_dir.RunDir, "write_config", full_disk)
  with pytest.raises(checkpoint.SaveError, match="writing the run's files failed"):
    train.train(tiny_config(tmp_path, token_dir, max_iters=2, wandb_log=True))
  assert [c[0] for c in fake.calls] == ["init", "finish"] and fake.calls[-1] == ("finish", 1)


def test_a_new_run_sets_an_earlier_runs_wandb_run_id_aside(tmp_path):
  """Else a resume of the new run with wandb_log would log to the earlier run's charts."""
  rundir = run_dir.RunDir(str(tmp_path / "run"))
  os.makedirs(rundir.out_dir)
  rundir.write_wandb_run_id("earlier")
  rundir.keep_metrics_until(None, evaluated=False)
  assert rundir.read_wandb_run_id() is None
  assert os.listdir(rundir.out_dir) == ["wandb_run_id.1"]


def test_a_folder_named_wandb_is_not_the_package(tmp_path, monkeypatch):
  """`wandb offline` writes ./wandb/settings; without the package, Python imports that folder."""
  (tmp_path / "wandb").mkdir()
  monkeypatch.syspath_prepend(str(tmp_path))
  monkeypatch.setitem(sys.modules, "wandb", None)  # restored after the test, whatever it held
  monkeypatch.delitem(sys.modules, "wandb")
  if importlib.util.find_spec("wandb").origin is not None:
    pytest.skip("wandb is installed")
  config = defaults.view(sinks.SinkConfig, tiny_config(tmp_path, "", wandb_log=True))
  with pytest.raises(UserError, match=r"needs the 'wandb' package, which is not installed \(.*"
                                      r"/wandb is a folder of its name\): pip install wandb"):
    sinks.require_packages(config)


def test_launch_says_a_missing_library_before_it_makes_a_dataset(tmp_path, monkeypatch):
  import launch
  monkeypatch.setitem(sys.modules, "wandb", None)
  data_dir = tmp_path / "python_docs"
  with pytest.raises(UserError, match=r"config.wandb_log=True needs the 'wandb' package"):
    launch.run(tiny_config(tmp_path, str(data_dir), dataset="python_docs", wandb_log=True))
  assert not data_dir.exists() and not (tmp_path / "run").exists()


def test_a_library_that_fails_to_import_is_one_error_line(tmp_path, monkeypatch):
  broken = tmp_path / "lib" / "tensorboardX"
  broken.mkdir(parents=True)
  (broken / "__init__.py").write_text(
      "raise TypeError('Descriptors cannot be created directly.\\nMore lines.')\n")
  monkeypatch.syspath_prepend(str(tmp_path / "lib"))
  monkeypatch.delitem(sys.modules, "tensorboardX", raising=False)
  config = defaults.view(sinks.SinkConfig, tiny_config(tmp_path, "", tensorboard_log=True))
  with pytest.raises(UserError, match=r"^config.tensorboard_log=True: importing 'tensorboardX' "
                                      r"failed \(TypeError: Descriptors cannot be created "
                                      r"directly.\); reinstall it"):
    sinks.require_packages(config)


@pytest.mark.parametrize("key,package", [("wandb_log", "wandb"),
                                         ("tensorboard_log", "tensorboardX")])
def test_a_missing_library_is_a_clear_error_that_leaves_the_run_as_it_was(
    tmp_path, token_dir, monkeypatch, key, package):
  train.train(tiny_config(tmp_path, token_dir, max_iters=3))
  run = tmp_path / "run"
  before = {name: (run / name).read_bytes() for name in ("config.json", "metrics.jsonl")}
  monkeypatch.setitem(sys.modules, package, None)  # makes `import package` fail
  with pytest.raises(UserError, match=rf"config.{key}=True needs the '{package}' package"):
    train.train(tiny_config(tmp_path, token_dir, max_iters=6, init_from="resume",
                            **{key: True}))
  assert {name: (run / name).read_bytes() for name in before} == before
  assert sorted(os.listdir(run)) == ["checkpoints", "config.json", "metrics.jsonl", "run.lock"]


def test_a_wandb_run_that_cannot_start_is_one_error_and_leaves_the_run_as_it_was(
    tmp_path, token_dir, monkeypatch):
  train.train(tiny_config(tmp_path, token_dir, max_iters=3))
  run = tmp_path / "run"
  before = {name: (run / name).read_bytes() for name in ("config.json", "metrics.jsonl")}
  fake = FakeWandb()

  def refuse(**kwargs):  # as wandb does without its server: its folder made, then a wait
    os.makedirs(os.path.join(kwargs["dir"], "wandb", "run-1-x", "logs"))
    raise RuntimeError("Failed to get resume status for run x: context deadline exceeded\n"
                       "while retrying: dial tcp: no such host")

  fake.init = refuse
  monkeypatch.setitem(sys.modules, "wandb", fake)
  with pytest.raises(UserError) as e:
    train.train(tiny_config(tmp_path, token_dir, max_iters=6, init_from="resume",
                            wandb_log=True))
  assert str(e.value) == (
      "config.wandb_log=True: W&B could not start a run (RuntimeError: Failed to get resume "
      "status for run x: context deadline exceeded while retrying: dial tcp: no such host); "
      "check `wandb login` and the network, run with WANDB_MODE=offline (then `wandb sync`), "
      "or set --config.wandb_log=False")
  assert {name: (run / name).read_bytes() for name in before} == before
  assert sorted(os.listdir(run)) == ["checkpoints", "config.json", "metrics.jsonl", "run.lock"]


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
  # The time left is the steps' (80 at 250 ms), not tqdm's rate, which counts evaluations.
  assert "MFU 41.0%, 0m20s left" in stream.getvalue() and "it/s" not in stream.getvalue()
  bar.write({"event": "eval", "iter": 100, "val_loss": 2.0})  # the last log was at 99 or before
  last = stream.getvalue().rsplit("\r", 1)[-1]
  assert "100/100" in last and last.rstrip().endswith("MFU 41.0%]")  # finished: no time left
  bar.close()
  assert logging.get_absl_handler().python_handler.stream is stream  # restored
  resumed = sinks.ProgressBar(100, start_iter=5, stream=(terminal := Terminal()))
  resumed.write({"event": "eval", "iter": 8, "val_loss": 3.0})  # before its first train log
  assert "8/100 [00:00]" in terminal.getvalue()  # it drew ", , 0m00s left" beside it
  resumed.close()


def test_a_record_is_in_metrics_jsonl_as_soon_as_it_is_written(tmp_path):
  """`report` reads a live run's records, and a run killed outright (SIGKILL, the OOM killer)
  keeps every record it wrote: none waits in a buffer for the file's close."""
  path = run_dir.RunDir(str(tmp_path)).metrics_path
  writer = sinks.MetricsWriter(path)
  writer.write(TRAIN_RECORD)
  assert read_jsonl(path) == [TRAIN_RECORD]
  writer.close()
