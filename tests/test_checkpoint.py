"""Checkpoints and resume: exact continuation, refusals, fallbacks, signals, NaNs."""

from __future__ import annotations

import errno
import gc
import glob
import json
import logging
import math
import os
import re
import shutil
import signal
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
  TINY_VOCAB,
  build_state,
  checkpoint_steps,
  iter_losses,
  pattern_tokens,
  read_jsonl,
  records,
  restore_state,
  sigterm_after,
  start_launch,
  start_python,
  tiny_config,
  truncate_state,
  wait_for,
  wait_until_training,
  write_config_file,
)
from jax.experimental import multihost_utils

from jaxgpt import checkpoint, cli, preemption, report, resume, run_dir, train, train_step
from jaxgpt.errors import UserError
from jaxgpt.prep import shards


@pytest.fixture
def orbax_read_leftovers():
  """What Orbax leaves behind the failed read of a checkpoint: its reading coroutines, closed
  unawaited, and their callbacks on a closed event loop, for the garbage collector to report
  (dozens, each with a page of storage spec, as unraisable errors or, where the collector
  meets a coroutine first, "never awaited" warnings; cli._unraisable drops them for a user).
  They are collected here, under this test's filters, not in whichever test the collector next
  runs."""
  yield
  gc.collect()


@pytest.mark.parametrize("dropout,workers,dtype", [
    (0.0, 0, "float32"), (0.0, 0, "bfloat16"),  # every real recipe trains in bfloat16
    pytest.param(0.1, 2, "float32", marks=pytest.mark.slow)])
def test_resume_continues_bit_exactly(tmp_path, token_dir, dropout, workers, dtype):
  kw = {"dropout": dropout, "data_workers": workers, "eval_interval": 4, "lr_decay_iters": 8,
        "dtype": dtype}
  unbroken = tiny_config(tmp_path / "a", token_dir, max_iters=8, **kw)
  train.train(unbroken)
  first = tiny_config(tmp_path / "b", token_dir, max_iters=4, **kw)
  train.train(first)
  resumed = tiny_config(tmp_path / "b", token_dir, max_iters=8, init_from="resume", **kw)
  train.train(resumed)

  losses_a, losses_b = iter_losses(unbroken.out_dir), iter_losses(resumed.out_dir)
  assert [i for i, _ in losses_b] == list(range(8))
  assert losses_a == losses_b  # exact equality on CPU
  named = {r["iter"]: r["devices"] for r in records(resumed.out_dir, "train") if "devices" in r}
  devices = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
  assert named == {0: devices, 4: devices}  # each start's first log, for report to skip
  assert losses_a[0][1] == pytest.approx(math.log(TINY_VOCAB), abs=0.05)
  assert losses_a[-1][1] < losses_a[0][1] - 0.5
  state_a, _ = restore_state(unbroken, 8)
  state_b, meta_b = restore_state(resumed, 8)
  for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
    np.testing.assert_array_equal(a, b)
  assert meta_b["iter"] == 8 and meta_b["tokens"] == 8 * 2 * 4 * 16


def test_scratch_refuses_a_directory_with_checkpoints(tmp_path, token_dir):
  config = tiny_config(tmp_path, token_dir, max_iters=3)
  train.train(config)
  snapshot = lambda: (sorted(os.listdir(config.out_dir)),
                      read_jsonl(run_dir.RunDir(config.out_dir).metrics_path))
  before = snapshot()
  with pytest.raises(UserError, match="--config.init_from=resume"):
    train.train(config)
  assert snapshot() == before


def test_resume_without_checkpoints_says_so_and_leaves_no_folder_behind(tmp_path, token_dir):
  (tmp_path / "runs").mkdir()
  out_dir = tmp_path / "runs" / "new" / "deeper" / "run"
  with pytest.raises(UserError, match="no checkpoints to resume from"):
    train.train(tiny_config(tmp_path, token_dir, init_from="resume", out_dir=str(out_dir)))
  assert os.listdir(tmp_path / "runs") == []  # the folders the start made, and none other


def test_resume_in_a_nanogpt_out_dir_points_at_its_ckpt_pt(tmp_path, token_dir):
  config = tiny_config(tmp_path, token_dir, init_from="resume")
  os.makedirs(config.out_dir)
  ckpt = os.path.join(config.out_dir, "ckpt.pt")
  open(ckpt, "wb").close()
  with pytest.raises(UserError, match=re.escape(f"--config.init_from=nanogpt:{ckpt} (nanoGPT's")):
    train.train(config)


def test_resume_refuses_an_architecture_change(tmp_path, token_dir):
  train.train(tiny_config(tmp_path, token_dir, max_iters=3))
  with pytest.raises(UserError, match="n_embd: checkpoint 32 vs config 48"):
    train.train(tiny_config(tmp_path, token_dir, max_iters=6, n_embd=48, init_from="resume"))


def test_resume_refuses_another_seed(tmp_path, token_dir):
  train.train(tiny_config(tmp_path, token_dir, max_iters=3))
  with pytest.raises(UserError, match=r"seed: checkpoint 1337 vs config 7.*--config.seed=1337"):
    train.train(tiny_config(tmp_path, token_dir, max_iters=6, seed=7, init_from="resume"))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore:coroutine '.*' was never awaited:RuntimeWarning")
@pytest.mark.usefixtures("orbax_read_leftovers")
def test_corrupt_newest_checkpoint_falls_back_with_a_warning(tmp_path, token_dir, caplog):
  config = tiny_config(tmp_path, token_dir, max_iters=6, eval_interval=3, lr_decay_iters=6)
  train.train(config)
  newest = os.path.join(config.out_dir, "checkpoints", "6")
  truncate_state(newest, files="ocdbt.process_*/d/*")  # the arrays' data, as a torn write cuts it
  resumed = tiny_config(tmp_path, token_dir, max_iters=9, eval_interval=3, lr_decay_iters=6,
                        init_from="resume")
  with caplog.at_level(logging.INFO):
    train.train(resumed)
  assert f"checkpoint {newest} is unreadable (a file of it is truncated or corrupt)" in caplog.text
  assert os.path.isdir(newest + ".unreadable")  # kept for inspection, never deleted
  redone = [r["iter"] for r in records(config.out_dir, "train")]
  assert redone == list(range(9))
  # Step 6 saved anew is a checkpoint to read like the others.
  assert any(m.startswith("done: checkpoints of steps 3, 6, 9 in") for m in caplog.messages)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore:coroutine '.*' was never awaited:RuntimeWarning")
@pytest.mark.usefixtures("orbax_read_leftovers")
def test_a_checkpoint_copied_under_another_step_s_name_is_not_resumed_as_that_step(
    tmp_path, token_dir, caplog):
  config = tiny_config(tmp_path, token_dir, max_iters=6, eval_interval=3, lr_decay_iters=9)
  train.train(config)
  checkpoints = os.path.join(config.out_dir, "checkpoints")
  shutil.copytree(os.path.join(checkpoints, "3"), os.path.join(checkpoints, "9"))
  resumed = tiny_config(tmp_path, token_dir, max_iters=9, eval_interval=3, lr_decay_iters=9,
                        init_from="resume")
  with caplog.at_level(logging.INFO):
    train.train(resumed)
  assert (f"checkpoint {checkpoints}/9 is unreadable (it holds step 3's checkpoint, not its "
          "own); using step 6") in caplog.text
  assert os.path.isdir(os.path.join(checkpoints, "9.unreadable"))
  assert [r["iter"] for r in records(config.out_dir, "train")] == list(range(9))
  # Another run's, of another width: its step, not its architecture, is what is wrong with it
  # (told to match the width, the resume then refused the width of the steps before it).
  other = tiny_config(tmp_path / "other", token_dir, max_iters=3, n_embd=48)
  train.train(other)
  shutil.copytree(os.path.join(other.out_dir, "checkpoints", "3"),
                  os.path.join(checkpoints, "12"))
  caplog.clear()
  with caplog.at_level(logging.INFO):
    train.train(tiny_config(tmp_path, token_dir, max_iters=9, eval_interval=3,
                            lr_decay_iters=9, init_from="resume"))
  assert (f"checkpoint {checkpoints}/12 is unreadable (it holds step 3's checkpoint, not its "
          "own); using step 9") in caplog.text


def test_the_cause_of_an_unreadable_checkpoint_is_a_line_not_a_dump_of_the_tree():
  dump = ValueError("Custom dataclass node type mismatch: " + "{'step': ArrayRestoreArgs()} " * 20)
  said = checkpoint.cause(dump)
  assert len(said) == checkpoint.CAUSE_CHARS and said.startswith("ValueError: Custom dataclass")
  grain_s = ValueError("File /run/checkpoints/5/data/process_0-of-1.json does not exist.")
  assert checkpoint.cause(grain_s) == "a file of it is missing"


def test_a_failed_write_says_free_space_only_for_a_full_disk():
  """Orbax's tensorstore tags the OS error in its message; a cast error of a path it cannot
  encode (a Latin-1 byte in out_dir) is no full disk."""
  full = ValueError("Error writing ... [source locations='...'] [os_error_code='28']")
  assert checkpoint.os_error(full) == "No space left on device [errno 28]"
  for error in (full, OSError(errno.EDQUOT, "Disk quota exceeded")):
    assert checkpoint.remedy(error) == "Free space"
  for error in (OSError(errno.EFBIG, "File too large"), OSError(errno.EACCES, "Denied"),
                RuntimeError("Unable to cast Python instance of type <class 'str'>")):
    assert checkpoint.remedy(error) == "Fix the cause"


def test_orbax_s_unfinished_reads_are_not_printed_beside_the_run_s_line(monkeypatch):
  """A failed read leaves Orbax's other reading coroutines to close unfinished, each an
  'Exception ignored' page (when, depends on timing); the run's own line says what failed.
  Anything else unraisable is still printed."""
  printed = []
  monkeypatch.setattr(sys, "__unraisablehook__", printed.append)
  orbax = "/venv/site-packages/orbax/checkpoint/_src/serialization/serialization.py"
  for where, name in ((orbax, "_read_array_index_and_device_put"), (__file__, "f")):
    coroutine = types.SimpleNamespace(cr_code=types.SimpleNamespace(co_filename=where,
                                                                    co_name=name))
    cli._unraisable(types.SimpleNamespace(exc_value=Exception("reading array index failed"),
                                          object=coroutine))
  assert [u.object.cr_code.co_name for u in printed] == ["f"]


def test_an_eval_only_resume_leaves_an_unreadable_checkpoint_where_it_was(tmp_path, token_dir,
                                                                          caplog):
  """eval_only reads the run and changes nothing: the newest checkpoint is passed over, not
  moved (a run that trains moves it, to save that step again), nor listed as one to read."""
  config = tiny_config(tmp_path, token_dir, max_iters=6, eval_interval=3, lr_decay_iters=6)
  train.train(config)
  truncate_state(os.path.join(config.out_dir, "checkpoints", "6"))
  ended = []
  with caplog.at_level(logging.INFO):
    train.train(tiny_config(tmp_path, token_dir, max_iters=6, eval_interval=3, lr_decay_iters=6,
                            init_from="resume", eval_only=True),
                hooks=train.Hooks(at_end=ended.append))
  assert sorted(os.listdir(os.path.join(config.out_dir, "checkpoints"))) == ["3", "6"]
  assert any(m.startswith("done: the checkpoint of step 3 in") for m in caplog.messages)
  assert ended == []  # eval_only evaluates and ends: no closing sample


@pytest.mark.slow
def test_an_unreadable_checkpoint_is_said_by_process_0_alone(tmp_path, token_dir, caplog,
                                                             monkeypatch):
  """Every process of a run said it, as it passed over the same steps. Another process says
  a cause of its own that process 0 did not meet (its slices of an fsdp state, say), which
  process 0's line leaves to it ("failed on process(es) [1], whose error says why"), or that
  differs from the cause process 0 met."""
  config = tiny_config(tmp_path, token_dir, max_iters=6, eval_interval=3, lr_decay_iters=6)
  train.train(config)
  truncate_state(os.path.join(config.out_dir, "checkpoints", "6"))
  evaluation = tiny_config(tmp_path, token_dir, max_iters=6, eval_interval=3, lr_decay_iters=6,
                           init_from="resume", eval_only=True)
  said = "checkpoints/6 is unreadable (a JSON file of it is not readable"
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  with caplog.at_level(logging.INFO):
    train.train(evaluation)  # process 0 met the same cause
  assert "is unreadable" not in caplog.text
  monkeypatch.setattr(multihost_utils, "broadcast_one_to_all", lambda x: np.ones_like(x))
  with caplog.at_level(logging.INFO):
    train.train(evaluation)  # process 0 read it
  assert said in caplog.text
  caplog.clear()
  monkeypatch.setattr(multihost_utils, "broadcast_one_to_all", lambda x: np.zeros_like(x))
  with caplog.at_level(logging.INFO):
    train.train(evaluation)  # process 0 met another cause of its own (before: unsaid here)
  assert said in caplog.text
  caplog.clear()
  monkeypatch.undo()
  with caplog.at_level(logging.INFO):
    train.train(evaluation)
  assert said in caplog.text


def poison_windows(token_dir: str) -> None:
  """Adds a train shard whose windows hold token 95, which the patched loss turns into NaN."""
  tokens = pattern_tokens(400, seed=9)
  tokens[::7] = 95
  shards.write_shard(os.path.join(token_dir, "syn_train_000002.bin"), tokens)


@pytest.fixture
def nan_loss(monkeypatch):
  real_loss = train_step.loss

  def loss(model, params, tokens, rng):
    value = real_loss(model, params, tokens, rng)
    return jnp.where(jnp.any(tokens == 95), jnp.nan, value)

  monkeypatch.setattr(train_step, "loss", loss)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, token_dir, nan_loss):
  poison_windows(token_dir)
  config = tiny_config(tmp_path, token_dir, max_iters=200, eval_interval=2, lr_decay_iters=200)
  with pytest.raises(FloatingPointError, match=r"non-finite loss or gradient at iter (\d+)") as e:
    train.train(config)
  bad_iter = int(e.value.args[0].split("at iter ")[1].split()[0])
  last = records(config.out_dir, "train")[-1]
  assert last["iter"] == bad_iter and np.isnan(last["loss"])
  steps = checkpoint_steps(config.out_dir)
  assert steps and max(steps) <= bad_iter
  assert f"last good checkpoint is step {max(steps)}" in str(e.value)
  state, _ = restore_state(config, max(steps))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))


def test_skip_nonfinite_drops_bad_updates_and_goes_on(tmp_path, token_dir, nan_loss):
  poison_windows(token_dir)
  config = tiny_config(tmp_path, token_dir, max_iters=40, eval_interval=20, lr_decay_iters=40,
                       skip_nonfinite=40)
  train.train(config)
  logged = records(config.out_dir, "train")
  assert any(np.isnan(r["loss"]) for r in logged)
  state, _ = restore_state(config, 40)
  assert 0 < int(state.nonfinite) < 40
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))
  assert logged[-1]["skipped_steps"] == int(state.nonfinite)  # what report says (it said none)
  assert (f"{int(state.nonfinite)} iterations skipped for a non-finite loss or gradient"
          in report.summary("run", report.load(config.out_dir)))


def test_weights_that_evaluate_to_nan_are_not_saved(tmp_path, token_dir, nan_loss, caplog):
  """A step can leave weights whose every later loss is NaN (a learning rate far too high):
  skip_nonfinite drops those steps, and their evaluation saves nothing, so "the last good
  checkpoint" of the error that ends the run is one."""
  tokens = pattern_tokens(1000, seed=3)
  tokens[::7] = 95  # every val window NaN, as such weights evaluate
  shards.write_shard(os.path.join(token_dir, "syn_val_000000.bin"), tokens)
  config = tiny_config(tmp_path, token_dir, max_iters=4, eval_interval=2,
                       always_save_checkpoint=True)
  with caplog.at_level("WARNING", logger="absl"):
    train.train(config)
  assert checkpoint_steps(config.out_dir) == []
  assert "step 4: val loss nan: weights that compute no finite loss are not saved" in caplog.text

  def sigterm_at_2(params):  # a stop in the evaluation of iteration 2: it saves nothing either
    scored.append(params)
    if len(scored) == 2:
      os.kill(os.getpid(), signal.SIGTERM)
    return {}, []

  scored = []
  config = tiny_config(tmp_path / "stopped", token_dir, max_iters=4, eval_interval=2)
  with caplog.at_level("WARNING", logger="absl"):
    train.train(config, hooks=train.Hooks(tasks=sigterm_at_2))
  assert "stopped by SIGTERM at iter 2, whose weights are not saved" in caplog.text
  assert checkpoint_steps(config.out_dir) == []


def test_a_stop_after_a_non_finite_iteration_saves_nothing(tmp_path, token_dir, nan_loss,
                                                            monkeypatch):
  """The check a log would have made comes before a stop's save, so no checkpoint carries
  more non-finite iterations than the run allows."""
  poison_windows(token_dir)
  monkeypatch.setattr(preemption.StopSignals, "stop_at", lambda self, it: it == 40)
  config = tiny_config(tmp_path, token_dir, max_iters=200, eval_interval=100, log_interval=100,
                       lr_decay_iters=200)
  with pytest.raises(FloatingPointError, match=r"between iter 1 and iter 39 .* nothing was "
                                               r"saved; no checkpoint was saved yet"):
    train.train(config)
  assert checkpoint_steps(config.out_dir) == []


def test_a_resume_allowing_fewer_non_finite_iterations_than_it_skipped_is_refused(
    tmp_path, token_dir, nan_loss):
  poison_windows(token_dir)
  kw = {"max_iters": 40, "eval_interval": 20, "lr_decay_iters": 40}
  train.train(tiny_config(tmp_path, token_dir, skip_nonfinite=40, **kw))
  skipped = int(restore_state(tiny_config(tmp_path, token_dir, **kw), 40)[0].nonfinite)
  config = tiny_config(tmp_path, token_dir, init_from="resume", **{**kw, "max_iters": 44})
  with pytest.raises(UserError, match=f"checkpoint 40 has skipped {skipped} non-finite "
                                      f".*--config.skip_nonfinite={skipped} or more"):
    train.train(config)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_a_dropped_update_keeps_the_moments_and_the_schedule_goes_on(tmp_path, nan_loss,
                                                                     optimizer):
  config = tiny_config(tmp_path, "", optimizer=optimizer, skip_nonfinite=5)
  setup, state = build_state(config)
  step = train_step.make_train_step(setup.model, setup.tx)
  good = jnp.asarray(pattern_tokens(2 * 4 * 17).reshape(2, 4, 17))
  bad = good.at[0, 0, 0].set(95)
  state, _ = step(state, good)
  before = jax.device_get(state.opt_state)  # the step donates the state
  state, metrics = step(state, bad)
  assert int(metrics["nonfinite"]) == 1 and int(state.step) == 2

  counts = {jax.tree_util.keystr(path): int(leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(state.opt_state)
            if jax.tree_util.keystr(path).endswith(".count")}
  paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(before)]
  moment_counts = {k: v for k, v in counts.items()  # Adam's and Muon's, beside their mu
                   if any(p.startswith(k.removesuffix("count") + "mu") for p in paths)}
  assert moment_counts and set(moment_counts.values()) == {1}  # the moments saw one update
  schedule_counts = {k: v for k, v in counts.items() if k not in moment_counts}
  assert schedule_counts and set(schedule_counts.values()) == {2}  # iteration 2's rate is next
  is_moment = lambda path: any(getattr(k, "name", None) in ("mu", "nu") for k in path)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(before),
                          jax.tree.leaves(state.opt_state)):
    if is_moment(path):
      np.testing.assert_array_equal(a, b)


def test_drop_records_after_moves_redone_iterations(tmp_path):
  path = str(tmp_path / "metrics.jsonl")
  lines = [{"event": "train", "iter": i} for i in range(6)] + [{"event": "eval", "iter": 4}]
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in lines)
  run_dir.RunDir(str(tmp_path)).keep_metrics_until(4, evaluated=True)
  kept = read_jsonl(path)
  assert [(r["event"], r["iter"]) for r in kept] == [("train", i) for i in range(4)] + [("eval", 4)]
  assert len(read_jsonl(path + ".superseded")) == 2


def test_sigterm_saves_a_checkpoint_and_exits_zero(tmp_path, token_dir):
  config_file = write_config_file(tmp_path, token_dir, max_iters=100000, eval_interval=100000,
                                  lr_decay_iters=100000)
  out_dir = str(tmp_path / "run")
  proc = start_launch(config_file)
  wait_until_training(out_dir, 120)
  proc.send_signal(signal.SIGTERM)
  output, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, output
  assert "--config.init_from=resume" in output
  steps = checkpoint_steps(out_dir)
  last_logged = records(out_dir, "train")[-1]["iter"]
  assert steps == [last_logged + 1]


def test_a_second_sigterm_still_stops_after_the_step_and_saves(monkeypatch, caplog):
  """Schedulers send SIGTERM again (Slurm to every task, Kubernetes on a retry); only a
  second Ctrl-C interrupts, without saving, after the step under way (the first's warning said
  "at once", where a step of minutes on a CPU held it for minutes)."""
  monkeypatch.setattr(preemption, "_trained", preemption._trained)
  monkeypatch.setattr(preemption, "_raised", preemption._raised)
  with preemption.StopSignals() as signals:
    signals.stop_at(5)  # the loop has begun
    os.kill(os.getpid(), signal.SIGTERM)
    try:
      os.kill(os.getpid(), signal.SIGTERM)
    except KeyboardInterrupt:
      pytest.fail("a second SIGTERM interrupted the run at once, without its save")
    assert signals.received == signal.SIGTERM and signals.stop_at(6)
  with preemption.StopSignals() as signals, caplog.at_level("WARNING", logger="absl"):
    signals.stop_at(5)
    os.kill(os.getpid(), signal.SIGINT)
    assert "Ctrl-C again stops after the step under way, beginning no save" in caplog.text
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)


def scripted_val_losses(monkeypatch, losses: list[float]) -> list[float]:
  """Makes the loop's evaluations return `losses` in turn; returns the ones not yet taken."""
  left = list(losses)
  monkeypatch.setattr(train, "val_losses", lambda *args: dict.fromkeys(("train", "val"),
                                                                       left.pop(0)))
  return left


def test_a_resume_saves_only_below_the_best_val_loss_before_it(tmp_path, token_dir, monkeypatch):
  """always_save_checkpoint=False, nanoGPT's save on improvement: the resumed run's first
  evaluation (5.0) is no improvement on the run's best (2.0), so nothing is saved."""
  scored = scripted_val_losses(monkeypatch, [9.0, 2.0, 5.0])  # steps 0, 2 | resumed: 4
  kw = {"eval_interval": 2, "lr_decay_iters": 4, "always_save_checkpoint": False}
  train.train(tiny_config(tmp_path, token_dir, max_iters=2, **kw))
  config = tiny_config(tmp_path, token_dir, max_iters=4, init_from="resume", **kw)
  train.train(config)
  assert not scored and checkpoint_steps(config.out_dir) == [2]


@pytest.mark.parametrize("change", ["eval_iters", "val split", "val tokens"])
def test_a_resume_whose_val_windows_changed_measures_its_best_afresh(tmp_path, token_dir,
                                                                      monkeypatch, caplog, change):
  """Its val loss (5.0) is over other windows than the checkpoint's best (2.0): compared with
  it, always_save_checkpoint=False never saved again. Its first evaluation saves and is the
  best kept; the next (6.0) is no improvement on it. Another dataset, or one made anew, whose
  val split has as many windows is told by their tokens."""
  scored = scripted_val_losses(monkeypatch, [9.0, 2.0, 5.0, 6.0])  # steps 0, 2 | resumed: 4, 6
  kw = {"eval_interval": 2, "lr_decay_iters": 6, "always_save_checkpoint": False}
  train.train(tiny_config(tmp_path, token_dir, max_iters=2, **kw))
  if change.startswith("val"):  # the data prepared anew: its val split smaller, or as large
    shards.write_shard(os.path.join(token_dir, "syn_val_000000.bin"),
                       pattern_tokens(800, seed=3) if change == "val split" else
                       pattern_tokens(1000, seed=4))
  else:
    kw["eval_iters"] = 4
  config = tiny_config(tmp_path, token_dir, max_iters=6, init_from="resume", **kw)
  with caplog.at_level("WARNING", logger="absl"):
    train.train(config)
  assert not scored and checkpoint_steps(config.out_dir) == [2, 4]
  _, meta = restore_state(config, 4)
  assert (meta["best_kept"], meta["best_val_loss"]) == ([5.0, 4], 5.0)
  if change == "val tokens":
    assert ("resume: the data changed since the checkpoint: val 62 windows of other tokens: the "
            "val loss is not comparable with the run's before") in caplog.messages
  afresh = [m for m in caplog.messages if m.startswith("resume: so the best")]
  assert afresh == [("resume: so the best val loss (which always_save_checkpoint=False saves "
                     "on) is measured afresh from this resume's evaluations; step 2, the best "
                     "kept before, is kept only while among the latest keep_checkpoints")]


def test_a_resume_of_checkpoints_older_than_their_evaluation_batch_keeps_its_windows(
    tmp_path, token_dir, monkeypatch):
  """Checkpoints written before they recorded the evaluation batch evaluated eval_iters
  batches of their run's global batch: resumed under another batch_size, the val loss is over
  those windows still, comparable with the run's best (it was over eval_iters new batches)."""
  real_save = checkpoint.Checkpoints.save  # as a run before the record saved them
  monkeypatch.setattr(checkpoint.Checkpoints, "save", lambda self, step, state, it, meta: real_save(
      self, step, state, it, {**meta, "data": {k: v for k, v in meta["data"].items()
                                               if k != "eval_batch_windows"}}))
  kw = {"eval_interval": 2, "lr_decay_iters": 4}
  train.train(tiny_config(tmp_path, token_dir, max_iters=2, **kw))  # batch_size 4, 1 device
  evaluated = []  # the windows of each evaluation
  monkeypatch.setattr(train, "val_losses", lambda _step, _params, _sources, n_windows, *_: (
      evaluated.append(n_windows) or dict.fromkeys(("train", "val"), 1.0)))
  train.train(tiny_config(tmp_path, token_dir, max_iters=4, init_from="resume", batch_size=2,
                          **kw))
  assert evaluated == [2 * 4]  # eval_iters=2 batches of 4 windows


def test_the_best_checkpoint_is_kept_when_it_was_evaluated_after_a_stop(tmp_path, token_dir,
                                                                      monkeypatch):
  """A stop saves step 4 before its evaluation; the resume scores it best, so it outlives
  the newer saves that push it out of the latest keep_checkpoints=1."""
  scored = scripted_val_losses(monkeypatch, [9.0, 5.0, 1.0, 3.0, 4.0])  # steps 0, 2, 4, 6, 8
  sigterm_after(monkeypatch, 3, fresh_only=True)  # lands before the evaluation at 4
  kw = {"eval_interval": 2, "keep_checkpoints": 1, "lr_decay_iters": 8}
  train.train(tiny_config(tmp_path, token_dir, max_iters=8, **kw))
  assert checkpoint_steps(str(tmp_path / "run")) == [2, 4]  # 2 the best so far
  config = tiny_config(tmp_path, token_dir, max_iters=8, init_from="resume", **kw)
  train.train(config)
  assert not scored  # each evaluation took its loss, the resumed step's included
  assert checkpoint_steps(config.out_dir) == [4, 8]
  _, meta = restore_state(config, 8)
  assert (meta["best_kept"], meta["best_val_loss"]) == ([1.0, 4], 1.0)


def test_the_best_checkpoint_kept_is_the_best_saved_when_step_0_scored_lower(
    tmp_path, token_dir, monkeypatch):
  """Fine-tuning that never beats its starting weights: step 0 has no checkpoint, so the best
  kept is the best of those saved (4), not best_val_loss's step."""
  scripted_val_losses(monkeypatch, [1.0, 5.0, 3.0, 4.0, 6.0])  # steps 0, 2, 4, 6, 8
  config = tiny_config(tmp_path, token_dir, max_iters=8, eval_interval=2, keep_checkpoints=1,
                       lr_decay_iters=8)
  train.train(config)
  assert checkpoint_steps(config.out_dir) == [4, 8]


def test_a_nan_val_loss_is_never_the_best_checkpoint_kept(tmp_path, token_dir, monkeypatch):
  """Kept as best, a NaN would never be beaten (NaN < x is false), and would outlive the real
  best; a resume of checkpoints that name it as best keeps the best finite one instead."""
  scripted_val_losses(monkeypatch, [9.0, math.nan, 3.0, 4.0, 5.0])  # steps 0, 2, 4, 6, 8
  kw = {"eval_interval": 2, "keep_checkpoints": 1, "lr_decay_iters": 8}
  config = tiny_config(tmp_path, token_dir, max_iters=8, **kw)
  train.train(config)
  assert checkpoint_steps(config.out_dir) == [4, 8]
  real_save = checkpoint.Checkpoints.save  # as a run before this fix saved them
  monkeypatch.setattr(checkpoint.Checkpoints, "save", lambda self, step, state, it, meta:
                      real_save(self, step, state, it, {**meta, "best_kept": [math.nan, 2]}))
  scripted_val_losses(monkeypatch, [6.0, 7.0])  # steps 10, 12
  train.train(tiny_config(tmp_path, token_dir, max_iters=10, init_from="resume", **kw))
  monkeypatch.setattr(checkpoint.Checkpoints, "save", real_save)
  train.train(tiny_config(tmp_path, token_dir, max_iters=12, init_from="resume", **kw))
  assert checkpoint_steps(config.out_dir) == [4, 12]


def test_a_resume_of_checkpoints_that_name_no_best_kept_keeps_the_best_evaluated(
    tmp_path, token_dir, monkeypatch):
  """Checkpoints written before metas named the best step: the lowest val loss saved is kept."""
  scripted_val_losses(monkeypatch, [9.0, 1.0, 5.0, 6.0, 7.0])  # steps 0, 2, 4; 6, 8
  real_save = checkpoint.Checkpoints.save
  monkeypatch.setattr(checkpoint.Checkpoints, "save", lambda self, step, state, it, meta:
                      real_save(self, step, state, it,
                                {k: v for k, v in meta.items() if k != "best_kept"}))
  kw = {"eval_interval": 2, "keep_checkpoints": 1, "lr_decay_iters": 8}
  train.train(tiny_config(tmp_path, token_dir, max_iters=4, **kw))
  config = tiny_config(tmp_path, token_dir, max_iters=8, init_from="resume", **kw)
  train.train(config)
  assert checkpoint_steps(config.out_dir) == [2, 8]


def test_a_resume_on_changed_data_says_so(tmp_path, token_dir, caplog):
  kw = {"eval_interval": 2, "lr_decay_iters": 4}
  train.train(tiny_config(tmp_path, token_dir, max_iters=2, **kw))
  os.remove(os.path.join(token_dir, "syn_train_000001.bin"))  # the data prepared anew, smaller
  with caplog.at_level("WARNING", logger="absl"):
    train.train(tiny_config(tmp_path, token_dir, max_iters=4, init_from="resume", **kw))
  assert ("resume: the data changed since the checkpoint: train 311 -> 187 windows: training "
          "goes on in another order\n") in caplog.text


def test_a_resume_reading_another_data_folder_names_both(tmp_path, token_dir, caplog,
                                                          monkeypatch):
  """A relative data_dir (the default data/NAME) resumed from another working directory reads
  (or makes, or downloads) a copy of its own there."""
  kw = {"eval_interval": 2, "lr_decay_iters": 4}
  shutil.copytree(token_dir, tmp_path / "first" / "data")
  (tmp_path / "second").mkdir()
  monkeypatch.chdir(tmp_path / "first")
  train.train(tiny_config(tmp_path, "data", max_iters=2, **kw))
  monkeypatch.chdir(tmp_path / "second")
  # Nothing there yet: said before launch.py makes or downloads a copy, or says it is missing.
  first = tmp_path / "first" / "data"
  said = (f"resume: data is not there (from {tmp_path / 'second'}); the run read its data from "
          f"{first}. Run from the directory the run started in, or add --config.data_dir={first}")
  with pytest.raises(UserError, match=re.escape(said)):
    train.check_start(tiny_config(tmp_path, "data", init_from="resume"))
  # A folder named as a whole path is the user's choice (auto_prepare may make it there).
  train.check_start(tiny_config(tmp_path, str(tmp_path / "second" / "data"), init_from="resume"))
  shutil.copytree(token_dir, tmp_path / "second" / "data")
  with caplog.at_level("WARNING", logger="absl"):
    train.train(tiny_config(tmp_path, "data", max_iters=4, init_from="resume", **kw))
  assert (f"resume: the data is read from {tmp_path / 'second' / 'data'}; the checkpoint's run "
          f"read {tmp_path / 'first' / 'data'}\n") in caplog.text
  assert "measured afresh" not in caplog.text  # a copy of the same val split: the same measure
  caplog.clear()
  with caplog.at_level("INFO", logger="absl"):  # the same folder, named another way: no word
    train.train(tiny_config(tmp_path, str(tmp_path / "second" / "data") + "/", max_iters=6,
                            init_from="resume", **kw))
  assert "resume: the data is read from" not in caplog.text
  assert "resume: data_dir changed" not in caplog.text


def test_a_resume_with_another_eval_iters_says_the_val_loss_is_over_other_windows(
    tmp_path, token_dir, caplog):
  kw = {"eval_interval": 2, "lr_decay_iters": 4}
  train.train(tiny_config(tmp_path, token_dir, max_iters=2, **kw))
  with caplog.at_level("WARNING", logger="absl"):
    train.train(tiny_config(tmp_path, token_dir, max_iters=4, init_from="resume", eval_iters=4,
                            **kw))
  assert "resume: eval_iters changed, so the val loss is over other windows" in caplog.text


def test_a_resume_removes_the_folders_of_saves_that_never_finished(tmp_path, token_dir):
  kw = {"eval_interval": 2, "lr_decay_iters": 4}
  train.train(tiny_config(tmp_path, token_dir, max_iters=2, **kw))
  unfinished = tmp_path / "run" / "checkpoints" / "3.orbax-checkpoint-tmp-1764700000"
  (unfinished / "state").mkdir(parents=True)
  (unfinished / "state" / "part").write_bytes(b"0" * 1000)
  train.train(tiny_config(tmp_path, token_dir, max_iters=4, init_from="resume", **kw))
  assert not unfinished.exists() and checkpoint_steps(str(tmp_path / "run")) == [2, 4]


# launch.py, its second save (step 4) held before its commit until the test kills the process.
HOLD_THE_SECOND_SAVE = """
import runpy, sys, threading
import orbax.checkpoint as ocp
real_finalize, calls = ocp.StandardCheckpointHandler.finalize, []

def finalize(self, directory):
  calls.append(directory)
  if len(calls) == 2:
    threading.Event().wait()  # the save stays in its temporary folder
  return real_finalize(self, directory)

ocp.StandardCheckpointHandler.finalize = finalize
sys.argv[0] = "launch.py"
runpy.run_path("launch.py", run_name="__main__")
"""


@pytest.mark.slow
def test_sigkill_during_a_save_resumes_from_the_previous_step(tmp_path, token_dir):
  """The save is held in flight (its commit never comes) rather than caught there by timing."""
  kw = {"eval_interval": 2, "eval_iters": 1, "lr_decay_iters": 100000, "keep_checkpoints": 2}
  config_file = write_config_file(tmp_path, token_dir, max_iters=100000, **kw)
  out_dir = str(tmp_path / "run")
  ckpt_dir = os.path.join(out_dir, "checkpoints")
  in_flight = lambda: glob.glob(os.path.join(ckpt_dir, "*tmp*"))
  completed = lambda: [d for d in glob.glob(os.path.join(ckpt_dir, "*"))
                       if os.path.basename(d).isdigit()]
  proc = start_python("-c", HOLD_THE_SECOND_SAVE, f"--config={config_file}")
  try:
    wait_for(lambda: completed() and in_flight(), 300, "no save was caught in flight")
  finally:
    proc.kill()  # SIGKILL
    proc.wait(timeout=60)
  assert in_flight()  # the killed save left its temporary directory behind
  assert checkpoint_steps(out_dir) == [2]
  train.train(tiny_config(tmp_path, token_dir, max_iters=4, init_from="resume", **kw))
  assert [r["iter"] for r in records(out_dir, "train")][-2:] == [2, 3]
  assert not in_flight()  # the resume removed the killed save's folder


def saved_steps(directory: str, steps: list[int]) -> checkpoint.Checkpoints:
  """A Checkpoints of `directory` holding a tiny state at each of `steps` (no training)."""
  ckpts = checkpoint.Checkpoints(directory, keep=10)
  for step in steps:
    ckpts.save(step, {"w": jnp.full((3,), float(step))}, None, {"iter": step})
  ckpts.wait()
  return ckpts


def test_a_step_set_aside_twice_keeps_the_first_copy(tmp_path):
  """The second unreadable copy of a step (a resume set 4 aside; the run saved 4 anew,
  and it broke again) goes to 4.unreadable2, never over the first."""
  ckpts = saved_steps(str(tmp_path / "checkpoints"), [2, 4])
  first = tmp_path / "checkpoints" / "4.unreadable"
  first.mkdir()
  (first / "kept").write_text("the first copy")
  try:
    ckpts.set_aside([4])
  finally:
    ckpts.close()
  assert (first / "kept").read_text() == "the first copy"
  assert (tmp_path / "checkpoints" / "4.unreadable2").is_dir()
  assert checkpoint.finished_steps(str(tmp_path / "checkpoints")) == [2]


def test_a_copy_pinned_under_a_name_of_its_own_is_no_step_of_the_run(tmp_path):
  """A step copied aside in checkpoints/ (best_4, to outlive the keep policy) is no checkpoint
  the run's manager lists, so the early checks must not count it: a folder of such copies alone
  was refused as checkpoints to a new run and had none to a resume."""
  directory = str(tmp_path / "checkpoints")
  ckpts = saved_steps(directory, [2, 4])
  try:
    shutil.copytree(os.path.join(directory, "4"), os.path.join(directory, "best_4"))
    shutil.copytree(os.path.join(directory, "2"), os.path.join(directory, "run_1_9"))
    shutil.copytree(os.path.join(directory, "4"), os.path.join(directory, "04"))
    ckpts.manager.reload()
    assert checkpoint.finished_steps(directory) == ckpts.steps() == [2, 4]
  finally:
    ckpts.close()


def test_a_failed_save_names_the_newest_good_checkpoint(tmp_path):
  """With several checkpoints, the message names the newest (not the oldest)."""
  ckpts = saved_steps(str(tmp_path / "checkpoints"), [3, 6])
  try:
    error = ckpts._save_failed(9, OSError(28, "No space left on device"))
  finally:
    ckpts.close()
  assert f"the last good checkpoint is step 6 in {ckpts.directory}, and " in str(error)


def test_the_best_kept_of_old_checkpoints_is_one_up_to_the_resumed_step():
  """Checkpoints whose metas name no best_kept: the newer steps that did not read back
  are no candidates, however low their val loss."""
  metas = {2: {"val_loss": 5.0}, 4: {"val_loss": 3.0}, 6: {"val_loss": 1.0}}

  class Checkpoints:
    steps = staticmethod(lambda: sorted(metas))
    read_meta = staticmethod(metas.__getitem__)

  assert resume._best_kept({}, Checkpoints(), 4) == (3.0, 4)
  assert resume._best_kept({}, Checkpoints(), 6) == (1.0, 6)


def test_an_evaluation_after_too_many_non_finite_iterations_saves_nothing(
    tmp_path, token_dir, nan_loss):
  """Logging rarely (log_interval > eval_interval), the evaluation is the first to see a
  non-finite iteration: it stops the run and saves no checkpoint carrying it."""
  poison_windows(token_dir)
  config = tiny_config(tmp_path, token_dir, max_iters=40, eval_interval=2, log_interval=100,
                       lr_decay_iters=40)
  with pytest.raises(FloatingPointError, match=r"non-finite loss or gradient between iter"):
    train.train(config)
  for step in checkpoint_steps(config.out_dir):
    assert int(restore_state(config, step)[0].nonfinite) == 0, step


def test_a_save_whose_meta_fails_while_its_state_is_written_leaves_no_partial_folder(
    tmp_path, token_dir, monkeypatch):
  """A full disk met by the meta's write: Orbax reports it while the state is still being
  written, which made the removed folder of the failed save again (and the message said it was
  removed)."""
  from orbax.checkpoint._src.handlers import json_checkpoint_handler as json_handler
  real_save = json_handler.JsonCheckpointHandler._save_fn

  async def save_fn(handler, meta, directory):
    if meta.get("iter", 0) >= 4:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return await real_save(handler, meta, directory)

  monkeypatch.setattr(json_handler.JsonCheckpointHandler, "_save_fn", save_fn)
  config = tiny_config(tmp_path, token_dir, max_iters=6, eval_interval=2, keep_checkpoints=1,
                       lr_decay_iters=6, vocab_size=8192)  # a state still written at the failure
  with pytest.raises(checkpoint.SaveError, match=r"^saving the checkpoint of step 4 failed: No "
                                                 r"space left on device \[errno 28\]\. The "
                                                 r"partial save was removed"):
    train.train(config)
  assert os.listdir(os.path.join(config.out_dir, "checkpoints")) == ["2"]
  restore_state(config, 2)  # the one before it, whole
