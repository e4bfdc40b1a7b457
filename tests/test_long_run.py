"""What a long run gets right: corrupted checkpoints, a stop before an evaluation, a new layout.

Each test is a fault a careful user with a 20-hour run met; each failed
before the fix it names.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
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
import time
import types
from pathlib import Path
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
  TINY_VOCAB,
  alive,
  checkpoint_steps,
  children,
  disk_full_from,
  iter_losses,
  pattern_tokens,
  records,
  restore_state,
  run_python,
  setup_of,
  sigterm_after,
  start_launch,
  start_python,
  tiny_config,
  write_config_file,
)

from jaxgpt import checkpoint, cli, defaults, preemption, resume, train, train_step
from jaxgpt.errors import UserError
from jaxgpt.evals import hellaswag
from jaxgpt.interop import weights

EVERY_10 = {"eval_interval": 10, "lr_decay_iters": 40, "always_save_checkpoint": True,
            "keep_checkpoints": 5}


def flip_bytes(path: str, at: int, n: int = 64) -> None:
  """XORs n bytes of a file, as bit rot or a bad copy would change them."""
  with open(path, "r+b") as f:
    f.seek(at)
    data = bytearray(f.read(n))
    f.seek(at)
    f.write(bytes(b ^ 0xFF for b in data))


def test_fingerprints_change_with_any_one_element():
  state = {"w": jax.numpy.arange(1000, dtype=jax.numpy.float32), "n": jax.numpy.int32(7)}
  before = checkpoint.fingerprints(state)
  for i in (0, 517, 999):  # one ulp, the least a flipped bit can do
    changed = {**state, "w": state["w"].at[i].set(jax.numpy.nextafter(state["w"][i], 2e3))}
    assert checkpoint.fingerprints(changed)["['w']"] != before["['w']"]
  assert checkpoint.fingerprints(state) == before


def test_fingerprints_change_when_elements_move_or_changes_cancel():
  """Two elements swapped (a block of a file copied to the wrong place), and two bit flips
  that cancel in a sum of the bits."""
  w = jnp.arange(1000, dtype=jnp.float32)
  before = checkpoint.fingerprints({"w": w})["['w']"]
  swapped = w.at[3].set(w[700]).at[700].set(w[3])
  assert checkpoint.fingerprints({"w": swapped})["['w']"] != before
  bits = jax.lax.bitcast_convert_type(w, jnp.uint32)
  cancelled = bits.at[10].add(1).at[20].add(-1)  # one bit up here, one down there
  assert checkpoint.fingerprints({"w": jax.lax.bitcast_convert_type(cancelled, jnp.float32)}
                                 )["['w']"] != before


@pytest.mark.slow
def test_a_silently_corrupted_checkpoint_is_set_aside_for_the_one_before(tmp_path, token_dir):
  config = tiny_config(tmp_path, token_dir, max_iters=40, **EVERY_10)
  train.train(config)
  state_dir = os.path.join(config.out_dir, "checkpoints", "40", "state")
  for path in glob.glob(os.path.join(state_dir, "ocdbt.process_*", "d", "*")):  # the arrays'
    flip_bytes(path, os.path.getsize(path) // 2)  # (which file holds which varies by run)
  resumed = tiny_config(tmp_path, token_dir, max_iters=41, init_from="resume", **EVERY_10)
  train.train(resumed)  # resumes from 30, redoes 30..40, trains 41
  assert os.path.isdir(os.path.join(config.out_dir, "checkpoints", "40.unreadable"))
  assert [r["iter"] for r in records(config.out_dir, "train")][-11:] == list(range(30, 41))
  assert all(np.isfinite(r["loss"]) for r in records(config.out_dir, "train"))


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["removed", "not json"])
def test_an_unreadable_data_position_continues_at_the_window_the_checkpoint_reached(
    tmp_path, token_dir, damage):
  """The same batches as the saved iterator state gives: the resume trains what a resume of
  the intact checkpoint does, and nothing is set aside."""
  config = tiny_config(tmp_path, token_dir, max_iters=20, **EVERY_10)
  train.train(config)
  intact = tmp_path / "intact"
  shutil.copytree(config.out_dir, intact / "run")
  data_dir = os.path.join(config.out_dir, "checkpoints", "20", "data")
  if damage == "removed":
    for path in glob.glob(os.path.join(data_dir, "*")):
      os.remove(path)
  else:
    for path in glob.glob(os.path.join(data_dir, "**", "*"), recursive=True):
      if os.path.isfile(path):
        with open(path, "w") as f:
          f.write("xx{")
  for base in (tmp_path, intact):
    train.train(tiny_config(base, token_dir, max_iters=24, init_from="resume", **EVERY_10))
  assert checkpoint_steps(config.out_dir) == checkpoint_steps(str(intact / "run"))
  assert not glob.glob(os.path.join(config.out_dir, "checkpoints", "*.unreadable*"))
  resumed = iter_losses(config.out_dir)
  assert resumed[-4:] == iter_losses(str(intact / "run"))[-4:]
  assert [it for it, _ in resumed[-4:]] == [20, 21, 22, 23]


@pytest.mark.slow
def test_eval_only_on_a_resume_evaluates_the_checkpoint_and_changes_nothing(tmp_path, token_dir,
                                                                            caplog):
  # Evaluations without saves: the last records come after the last checkpoint (10).
  kw = {**EVERY_10, "always_save_checkpoint": False}
  config = tiny_config(tmp_path, token_dir, max_iters=20, **kw)
  train.train(config)
  run_files = [os.path.join(config.out_dir, name) for name in ("metrics.jsonl", "config.json")]
  files = {path: Path(path).read_bytes() for path in run_files}
  steps = checkpoint_steps(config.out_dir)
  with caplog.at_level(logging.INFO):
    losses = train.train(tiny_config(tmp_path, token_dir, max_iters=30, init_from="resume",
                                     eval_only=True, **kw))
  assert {path: Path(path).read_bytes() for path in files} == files
  assert checkpoint_steps(config.out_dir) == steps
  assert not os.path.exists(run_files[0] + ".superseded")
  assert (f"step {steps[-1]}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"
          in caplog.messages)


@pytest.mark.slow
def test_the_evaluation_set_stays_the_same_under_another_batch_layout(tmp_path, token_dir, caplog):
  kw = {**EVERY_10, "batch_size": 4, "gradient_accumulation_steps": 1}
  unbroken = tiny_config(tmp_path / "a", token_dir, max_iters=30, **kw)
  train.train(unbroken)
  train.train(tiny_config(tmp_path / "b", token_dir, max_iters=20, **kw))
  # Half the micro-batch, twice the accumulation: the same tokens per iteration, and 3 of
  # the 8 eval windows are left over from batches of 2.
  resumed = tiny_config(tmp_path / "b", token_dir, max_iters=30, init_from="resume",
                        **{**kw, "batch_size": 2, "gradient_accumulation_steps": 2,
                           "eval_iters": 2})
  with caplog.at_level("INFO", logger="absl"):
    train.train(resumed)
  assert "evaluation: the same 8 windows (128 tokens) of each split every time" in caplog.text
  a, b = (records(c.out_dir, "eval")[-1] for c in (unbroken, resumed))
  assert a["iter"] == b["iter"] == 30
  assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-5)


@pytest.mark.slow
def test_a_resume_with_a_smaller_batch_plans_the_tokens_the_run_will_have(tmp_path, token_dir,
                                                                          caplog):
  kw = {**EVERY_10, "gradient_accumulation_steps": 1}
  train.train(tiny_config(tmp_path, token_dir, max_iters=10, batch_size=4, **kw))  # 640 tokens
  resumed = tiny_config(tmp_path, token_dir, max_iters=20, batch_size=2, init_from="resume",
                        **kw)
  with caplog.at_level("INFO", logger="absl"):
    train.train(resumed)
  assert "max_iters=20 -> 960 tokens" in caplog.text  # 640 + 10 x 2 x 16, not 20 x 2 x 16
  assert records(resumed.out_dir, "train")[-1]["tokens"] == 960


def test_val_losses_of_leftover_windows_weigh_as_the_rest(tmp_path, token_dir):
  """8 windows in batches of 3: 2 batches and 2 windows left over, against one batch of 8."""
  config = tiny_config(tmp_path, token_dir)
  setup = setup_of(config)
  params = setup.new_state().params
  from jaxgpt import data, sharding
  val = {"val": data.open_split(token_dir, "val", config.block_size, config.vocab_size)}
  step = train_step.make_eval_step(setup.model)
  layout = lambda b: sharding.BatchLayout(sharding.make_mesh(), 1, b, config.block_size)
  whole = train.val_losses(step, params, val, 8, config.seed, layout(8))["val"]
  assert train.val_losses(step, params, val, 8, config.seed, layout(3))["val"] == pytest.approx(
      whole, rel=1e-6)

  class FourDevices(sharding.BatchLayout):  # a global batch of 4 micro-batches
    global_batch = local_batch = property(lambda self: 4 * self.batch_size)

  rows = []
  counted = lambda params, batch: rows.append(len(batch)) or step(params, batch)
  many = FourDevices(sharding.make_mesh(), 1, 2, config.block_size)
  assert train.val_losses(counted, params, val, 15, config.seed, many)["val"] == pytest.approx(
      train.val_losses(step, params, val, 15, config.seed, layout(15))["val"], rel=1e-6)
  assert rows == [8, 2, 2, 2, 1]  # 7 left over: no device computes more than its micro-batch


@pytest.mark.slow
def test_a_stop_that_lands_before_the_final_evaluation_gets_it_done_on_resume(
    tmp_path, token_dir, monkeypatch):
  sigterm_after(monkeypatch, 19)  # it lands while iteration 19, the last, is in flight
  config = tiny_config(tmp_path, token_dir, max_iters=20, **EVERY_10)
  ended = []  # the closing sample's hook: after training, never after a stop
  train.train(config, hooks=train.Hooks(at_end=ended.append))
  assert [r["iter"] for r in records(config.out_dir, "eval")] == [0, 10]
  assert checkpoint_steps(config.out_dir) == [10, 20]  # the stop saved 20, without its eval
  assert ended == []
  monkeypatch.undo()
  train.train(tiny_config(tmp_path, token_dir, max_iters=20, init_from="resume", **EVERY_10),
              hooks=train.Hooks(at_end=ended.append))
  assert [r["iter"] for r in records(config.out_dir, "eval")] == [0, 10, 20]
  assert checkpoint_steps(config.out_dir) == [10, 20]  # evaluated, not saved twice
  assert len(ended) == 1


def test_a_stop_in_the_last_evaluation_or_the_closing_sample_cuts_the_sample(
    tmp_path, token_dir, caplog):
  """The README's promise, exit 0 without the closing sample, holds for a SIGTERM in the last
  iteration's evaluation (the sample is not begun) or in the sample (it is cut short); the
  checkpoint of max_iters is saved before either."""
  def sigterm_at_the_end(params):  # the tasks hook, called at 0 and 2 (max_iters)
    scored.append(params)
    if len(scored) == 2:
      os.kill(os.getpid(), signal.SIGTERM)
    return {}, []

  def sample(params):
    started.append(params)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(60)  # a long sample: the signal ends it
    sampled.append(params)

  for name, hooks, begun, said in (
      ("eval", lambda: train.Hooks(tasks=sigterm_at_the_end, at_end=sample), 0, "skipped"),
      ("sample", lambda: train.Hooks(at_end=sample), 1, "cut short")):
    scored, started, sampled = [], [], []
    config = tiny_config(tmp_path / name, token_dir, max_iters=2, eval_interval=2)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
      train.train(config, hooks=hooks())
    assert (len(started), sampled) == (begun, [])  # a sample begun was cut in its sleep
    assert ("stopped by SIGTERM: the run is saved, and what it does at its end (the closing "
            f"sample) is {said}") in caplog.text
    assert checkpoint_steps(config.out_dir) == [2]
    assert [r["iter"] for r in records(config.out_dir, "eval")] == [0, 2]


def test_a_stop_in_the_last_evaluation_saves_max_iters_though_it_is_no_best(tmp_path,
                                                                            token_dir,
                                                                            monkeypatch):
  """With always_save_checkpoint=False a stop saves the iteration it reached whatever its val
  loss (the README's promise), the last one too: 'the run is saved' was said of step 1 alone."""
  losses = iter([5.0, 4.0, 4.5])  # steps 0, 1, 2: the last is no new best

  def evaluator(*_):
    def eval_fn(params):
      val = next(losses)
      if val == 4.5:
        os.kill(os.getpid(), signal.SIGTERM)  # lands in the last evaluation
      return {"train": val, "val": val}
    return eval_fn

  monkeypatch.setattr(train, "_evaluator", evaluator)
  config = tiny_config(tmp_path, token_dir, max_iters=2, eval_interval=1,
                       always_save_checkpoint=False)
  train.train(config, hooks=train.Hooks(at_end=lambda params: pytest.fail("sampled")))
  assert checkpoint_steps(config.out_dir) == [1, 2]


def test_a_stop_in_a_last_evaluation_whose_val_loss_is_nan_says_it_is_not_saved(
    tmp_path, token_dir, monkeypatch, caplog):
  """Weights of no finite val loss are not saved, a stop's either: the run said 'the run is
  saved' of them, and that a closing sample never begun was cut short."""
  losses = iter([5.0, 4.0, math.nan])

  def evaluator(*_):
    def eval_fn(params):
      val = next(losses)
      if math.isnan(val):
        os.kill(os.getpid(), signal.SIGTERM)  # lands in the last evaluation
      return {"train": val, "val": val}
    return eval_fn

  monkeypatch.setattr(train, "_evaluator", evaluator)
  config = tiny_config(tmp_path, token_dir, max_iters=2, eval_interval=1)
  with caplog.at_level(logging.WARNING):
    train.train(config, hooks=train.Hooks(at_end=lambda params: pytest.fail("sampled")))
  assert checkpoint_steps(config.out_dir) == [1]
  assert ("stopped by SIGTERM: the last iteration's weights are not saved (its val loss is not "
          "finite), and what it does at its end (the closing sample) is skipped") in caplog.text


def test_a_stop_in_the_closing_sample_of_a_run_that_keeps_its_best_says_it_is_saved(
    tmp_path, token_dir, monkeypatch, caplog):
  """always_save_checkpoint=False keeps the best, step 1 here: the run is saved; max_iters'
  val loss, finite, is no reason to say its weights are lost."""
  losses = iter([5.0, 4.0, 4.5])
  monkeypatch.setattr(train, "_evaluator", lambda *_: lambda params: dict.fromkeys(
      ("train", "val"), next(losses)))
  config = tiny_config(tmp_path, token_dir, max_iters=2, eval_interval=1,
                       always_save_checkpoint=False)
  with caplog.at_level(logging.WARNING):
    train.train(config, hooks=train.Hooks(at_end=lambda params: os.kill(os.getpid(),
                                                                         signal.SIGTERM)))
  assert checkpoint_steps(config.out_dir) == [1]
  assert ("stopped by SIGTERM: the run is saved, and what it does at its end (the closing sample) "
          "is cut short") in caplog.text


def test_a_closing_sample_the_stop_did_not_cut_is_not_said_to_be_cut(caplog, monkeypatch):
  """A stop's StopAtEnd raised in JAX's gc callback is dropped there (Python prints it and goes
  on): the sample ran whole, and the run said it was cut short."""
  signals = preemption.StopSignals()
  ran = []

  def sample_where_the_stop_is_dropped(params):
    signals.received = signal.SIGTERM  # as the handler sets it before raising
    ran.append(params)

  printed = []
  monkeypatch.setattr(sys, "__unraisablehook__", printed.append)
  for error in (preemption.StopAtEnd("SIGTERM"), ValueError("another")):  # JAX's gc callback's
    cli._unraisable(types.SimpleNamespace(exc_value=error, object=None))
  assert [type(u.exc_value) for u in printed] == [ValueError]  # the stop's: no traceback
  with caplog.at_level(logging.WARNING):
    train._end(sample_where_the_stop_is_dropped, "params", signals, 3.0)
    assert ran == ["params"] and "stopped by SIGTERM: the run is saved\n" in caplog.text + "\n"
    caplog.clear()
    train._end(ran.append, "params", signals, 3.0)  # a stop before it: not begun
  assert ran == ["params"] and "(the closing sample) is skipped" in caplog.text


# A command whose compile (seconds long) a signal interrupts 0.3 s in.
STOP_IN_A_COMPILE = """
import contextlib
import os
import signal
import threading

import jax
import jax.numpy as jnp

from jaxgpt import cli, preemption


def deep(x):
  for i in range(400):
    x = jnp.sin(x @ x.T) + i
  return x.sum()


def main():
  lowered = jax.jit(jax.grad(deep)).lower(jnp.ones((64, 64)))  # seconds to compile
  closing = os.environ["STOPS"] == "closing"  # else Python's own Ctrl-C: KeyboardInterrupt
  with preemption.StopSignals() if closing else contextlib.nullcontext() as stops:
    if closing:
      stops.closing = True
    threading.Timer(0.3, os.kill, (os.getpid(), signal.Signals[os.environ["SIGNAL"]])).start()
    try:
      lowered.compile()
      print("the compile ended before the signal")
    except preemption.StopAtEnd:
      print("cut short")


if __name__ == "__main__":
  cli.run(main)
"""


@pytest.mark.slow
@pytest.mark.parametrize("stops,signal_name,code,said", [
    ("closing", "SIGTERM", 0, "cut short"),  # as a stop in the closing sample's compile
    ("python", "SIGINT", 130, "interrupted (Ctrl-C)")])  # as a Ctrl-C in a command's compile
def test_a_stop_in_a_compile_ends_the_process_without_a_crash(stops, signal_name, code, said):
  """jaxlib lets a signal handler's exception out of a compile that goes on in XLA's threads;
  Python's finalization under them crashed the process (SIGSEGV) where a stop came about a
  second into the closing sample, or a second Ctrl-C in the start-up's compile."""
  r = run_python("-c", STOP_IN_A_COMPILE, STOPS=stops, SIGNAL=signal_name, timeout=120)
  assert r.returncode == code, r.stderr[-2000:]
  assert said in r.stdout + r.stderr and "Fatal Python error" not in r.stderr


def test_the_loop_queues_at_most_one_step_behind_the_running_one(tmp_path, token_dir,
                                                                   monkeypatch):
  """So a stop, which saves the newest state, waits for two steps at most, not a queue."""
  array_type = type(jax.numpy.zeros(()))
  waited, losses = set(), []
  real_wait = array_type.block_until_ready
  monkeypatch.setattr(array_type, "block_until_ready",
                      lambda self: (waited.add(id(self)), real_wait(self))[1])
  compile_step = train_step.compile_train_step

  class Recording:
    def __init__(self, compiled):
      self.compiled = compiled
      self.memory_analysis = compiled.memory_analysis

    def __call__(self, state, batch):
      if len(losses) >= 2:  # step k is dispatched only once step k-2 is done
        assert id(losses[-2]) in waited, f"step {len(losses)} dispatched before step k-2 ended"
      state, metrics = self.compiled(state, batch)
      losses.append(metrics["loss"])
      return state, metrics

  monkeypatch.setattr(train_step, "compile_train_step",
                      lambda *args, **kwargs: Recording(compile_step(*args, **kwargs)))
  train.train(tiny_config(tmp_path, token_dir, max_iters=8, log_interval=100))
  assert len(losses) == 8


@pytest.mark.parametrize("key,value", [("mlp_act", "relu2"), ("norm", "rmsnorm"),
                                       ("logit_softcap", 30.0), ("qk_norm", True),
                                       ("n_head", 4), ("gelu_approximate", True)])
def test_a_resume_that_changes_what_the_model_computes_is_refused(tmp_path, key, value):
  """Every array keeps its shape under these (2 heads' params read as 4, exact GELU's as
  tanh's): only the architecture check can refuse them."""
  config = tiny_config(tmp_path, "")
  saved = config.to_dict()
  config[key] = value
  with pytest.raises(UserError, match=f"the architecture changed \\({key}: checkpoint") as e:
    resume.check_resumable(saved, config)
  assert f"Resume with the checkpoint's values (--config.{key}={saved[key]})" in str(e.value)
  # How it computes may change: the kernel, the loss chunks, recomputation, the dtype; and
  # dropout (nanoGPT's fine-tuning turns it on) and how fresh weights would have started.
  ok = tiny_config(tmp_path, "", attention="xla", loss_chunk_size=0, remat="full",
                   dtype="bfloat16", dropout=0.2, zero_init_projections=True)
  assert set(resume.check_resumable(saved, ok)) == {
      "dtype", "attention", "loss_chunk_size", "remat", "dropout", "zero_init_projections"}


def test_a_checkpoint_written_before_a_key_existed_resumes_under_its_default(tmp_path):
  config = tiny_config(tmp_path, "")
  saved = {k: v for k, v in config.to_dict().items()
           if k not in ("norm", "mlp_act", "optimizer")}
  assert resume.check_resumable(saved, config) == []
  with pytest.raises(UserError, match=r"optimizer: checkpoint 'adamw' vs config 'muon'"):
    resume.check_resumable(saved, tiny_config(tmp_path, "", optimizer="muon"))


def test_a_default_that_follows_another_key_follows_the_value_a_run_saved(tmp_path):
  """eval_tasks_interval follows eval_interval: a run older than it had its eval_interval's
  (filled with the default's 2000, a resume logged a change that was none)."""
  config = tiny_config(tmp_path, "", eval_interval=500)
  saved = {k: v for k, v in config.to_dict().items() if k != "eval_tasks_interval"}
  assert defaults.with_defaults(saved)["eval_tasks_interval"] == 500
  assert resume.check_resumable(saved, config) == []


def test_a_run_older_than_a_key_its_recipe_sets_resumes_saying_so(tmp_path, token_dir, caplog):
  """A checkpoint whose config lacks a key (written before the key existed) that the resuming
  recipe sets to other than its default: a KeyError traceback, reading the old value to log
  the change; now the change is logged from the default the old run had."""
  config = tiny_config(tmp_path, token_dir, max_iters=3)
  train.train(config)
  meta_file = os.path.join(config.out_dir, "checkpoints", "3", "meta", "metadata")
  with open(meta_file) as f:
    meta = json.load(f)
  del meta["config"]["eval_interval"]  # 3 in the tiny config, 2000 by default
  with open(meta_file, "w") as f:
    json.dump(meta, f)
  caplog.set_level(logging.INFO)
  train.train(tiny_config(tmp_path, token_dir, max_iters=4, init_from="resume"))
  assert ("resume: eval_interval changed from 2000 (the default; the run predates the key) to 3"
          in caplog.text)


def test_an_older_run_s_auto_attention_is_not_logged_as_a_change(caplog):
  """Runs before 2026-12-02 saved attention='auto', not the kernel it resolved to: each resume
  logged "attention changed from 'auto' to 'xla'" though the user changed nothing."""
  caplog.set_level(logging.INFO)
  then = {"attention": "auto", "grad_clip": 1.0}
  resume._log_changes(["attention", "grad_clip"], then, then,
                      {"attention": "xla", "grad_clip": 0.5}, trains=True)
  assert caplog.messages == ["resume: grad_clip changed from 1.0 to 0.5"]


@pytest.mark.slow
def test_a_non_finite_stop_is_a_user_error_naming_the_verified_checkpoint(tmp_path, token_dir,
                                                                          monkeypatch):
  config = tiny_config(tmp_path, token_dir, max_iters=10, **EVERY_10)
  train.train(config)
  real_loss = train_step.loss
  monkeypatch.setattr(train_step, "loss", lambda *a: real_loss(*a) * np.nan)
  with pytest.raises(UserError, match="non-finite loss or gradient at iter 10 .* the last good "
                                      "checkpoint is step 10"):
    train.train(tiny_config(tmp_path, token_dir, max_iters=20, init_from="resume", **EVERY_10))


def test_an_out_dir_that_cannot_be_written_is_one_line(tmp_path, token_dir):
  (tmp_path / "a_file").write_text("")
  config = tiny_config(tmp_path, token_dir, out_dir=str(tmp_path / "a_file" / "run"))
  with pytest.raises(UserError, match="a_file/run: a run cannot write there"):
    train.train(config)
  # Where the OS says only "File exists": the path is a file, or a symlink to nothing.
  (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
  for out_dir, why in (("a_file/", "a file, not a folder"),
                       ("dangling", f"a symlink to {tmp_path / 'nowhere'}, which does not exist")):
    config = tiny_config(tmp_path, token_dir, out_dir=str(tmp_path / out_dir))
    with pytest.raises(UserError, match=re.escape(f"a run cannot write there ({why}); pick a ")):
      train.train(config)
  assert not (tmp_path / "nowhere").exists()  # nothing made where the symlink points


def test_an_out_dir_orbax_cannot_name_is_refused_before_training(tmp_path, token_dir):
  """A Latin-1 byte in the path (os.fsdecode's surrogate): Orbax's save fails in a cast, an
  eval_interval into the run, and every read of the directory fails the same way."""
  out_dir = os.fsdecode(os.fsencode(str(tmp_path)) + b"/caf\xe9 run")
  with pytest.raises(UserError, match="its path holds bytes that are not UTF-8"):
    train.train(tiny_config(tmp_path, token_dir, out_dir=out_dir))
  assert not os.path.exists(out_dir)
  with pytest.raises(UserError, match="its path holds bytes that are not UTF-8"):
    weights.run_steps(out_dir)  # sample's, evaluate's and export's


def test_a_runs_checkpoints_folder_given_as_out_dir_names_the_flags_that_read_it(tmp_path):
  """The path a run's last line prints is its checkpoints folder, which a user may paste."""
  step = tmp_path / "run" / "checkpoints" / "4"
  step.mkdir(parents=True)
  with pytest.raises(UserError, match=re.escape(
      f"{step} is a checkpoint of a run: --out_dir={tmp_path / 'run'} --step=4 reads it")):
    weights.run_steps(str(step))
  with pytest.raises(UserError, match=re.escape(
      f"{step.parent}/ is a run's checkpoints folder: --out_dir={tmp_path / 'run'} reads it")):
    weights.run_steps(str(step.parent) + "/")
  # Not there (a typo, or a relative path from another folder): said so, and no guess. Before,
  # "nothing was trained into out_dir=... yet", as of a run that saved nothing.
  with pytest.raises(UserError, match=f"no checkpoints; there is no folder {tmp_path}/run/chec"):
    weights.run_steps(str(tmp_path / "run" / "checkpoints" / "5"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(UserError, match="no checkpoints; nothing was trained into out_dir="):
    weights.run_steps(str(tmp_path / "empty"))
  (tmp_path / "compared").mkdir()  # a run whose checkpoints were removed (a comparison's)
  (tmp_path / "compared" / "metrics.jsonl").write_text("")
  with pytest.raises(UserError, match="checkpoints: no checkpoints; the run's records are "
                     "there: it saved none, or they were removed$"):
    weights.run_steps(str(tmp_path / "compared"))


@pytest.mark.slow
def test_a_disk_that_fills_between_saves_stops_the_run_like_a_failed_save(tmp_path, token_dir,
                                                                          monkeypatch):
  config = tiny_config(tmp_path, token_dir, max_iters=20, **EVERY_10)
  disk_full_from(monkeypatch, 14)
  with pytest.raises(checkpoint.SaveError) as e:
    train.train(config)
  assert str(e.value).startswith("writing the train record of iteration 14 failed: No space "
                                 "left on device [errno 28]; the run stopped; the last good "
                                 "checkpoint is step 10")
  assert str(e.value).endswith("add --config.init_from=resume to continue.")


def test_a_hellaswag_file_that_is_not_utf8_is_named(tmp_path):
  path = tmp_path / "hs.jsonl"
  path.write_bytes(b'{"ctx": "caf\xe9", "endings": ["a", "b", "c", "d"], "label": 0}\n')
  with pytest.raises(UserError, match="hs.jsonl:1: not UTF-8 text"):
    hellaswag.read(str(path))


@pytest.mark.slow
def test_sampling_passes_over_an_unreadable_newest_checkpoint(tmp_path, token_dir, caplog):
  config = tiny_config(tmp_path, token_dir, max_iters=20, **EVERY_10)
  train.train(config)
  for path in glob.glob(os.path.join(config.out_dir, "checkpoints", "20", "state", "**", "*"),
                        recursive=True):
    if os.path.isfile(path) and os.path.getsize(path) > 100:
      flip_bytes(path, os.path.getsize(path) // 2)
  with caplog.at_level("WARNING", logger="absl"):
    _, _, step = weights.from_run(config.out_dir)
  assert step == 10 and "checkpoints/20 is unreadable" in caplog.text
  with pytest.raises(UserError, match=r"checkpoints/20 is unreadable \(.*\); --step=10 reads"):
    weights.from_run(config.out_dir, 20)
  assert checkpoint_steps(config.out_dir) == [10, 20]  # nothing moved by a reader


@pytest.mark.slow
def test_a_resume_past_max_iters_says_there_is_nothing_to_train(tmp_path, token_dir, caplog):
  """... and that alone, not the launch plan's warnings for a run it does not train; it leaves
  the run as it was: its config.json (which report reads the schedule from) and metrics; no
  closing sample."""
  train.train(tiny_config(tmp_path, token_dir, max_iters=20, **EVERY_10))
  run = tmp_path / "run"
  before = {name: (run / name).read_bytes() for name in ("config.json", "metrics.jsonl")}
  listed = sorted(os.listdir(run))
  ended = []
  caplog.clear()
  for max_iters in (10, 20):
    with caplog.at_level("WARNING", logger="absl"):
      losses = train.train(tiny_config(tmp_path, token_dir, max_iters=max_iters,
                                       init_from="resume", **EVERY_10),
                           hooks=train.Hooks(at_end=ended.append))
    assert losses == {}
  assert "the checkpoint is at iteration 20 and max_iters=10: nothing to train; raise " \
         "--config.max_iters" in caplog.text
  assert "plan:" not in caplog.text  # lr_decay_iters=40 differs from max_iters, say
  assert {name: (run / name).read_bytes() for name in before} == before
  assert sorted(os.listdir(run)) == listed and ended == []


def test_a_checkpoint_without_fingerprints_is_checked_for_non_finite_values():
  meta = {"iter": 3}
  checkpoint.verify({"w": np.ones(3, np.float32)}, meta)
  with pytest.raises(checkpoint.CorruptCheckpoint, match="non-finite"):
    checkpoint.verify({"w": np.array([1.0, np.nan], np.float32)}, meta)


@pytest.mark.slow
def test_grain_workers_end_with_a_run_that_is_killed(tmp_path, token_dir):
  proc = start_launch(write_config_file(tmp_path, token_dir, max_iters=100000,
                                        eval_interval=100000, lr_decay_iters=100000,
                                        data_workers=2))
  for line in proc.stdout:  # workers are up once the loop logs its first step
    if "iter 0/" in line:
      break
  spawned = list(children(proc.pid))
  assert len(spawned) >= 2
  proc.kill()
  proc.wait()
  deadline = time.monotonic() + 20
  while time.monotonic() < deadline and any(alive(pid) for pid in spawned):
    time.sleep(0.2)
  assert not [pid for pid in spawned if alive(pid)]


@pytest.mark.slow
def test_ctrl_c_at_a_terminal_stops_a_run_with_grain_workers_and_saves(tmp_path, token_dir):
  """A terminal's Ctrl-C reaches the whole process group, the Grain workers too: they keep
  feeding the run until it has saved (killed, they tracebacked, and a run waiting for data
  died with no checkpoint)."""
  out_dir = str(tmp_path / "run")
  proc = start_launch(write_config_file(tmp_path, token_dir, max_iters=100000,
                                        eval_interval=100000, lr_decay_iters=100000,
                                        data_workers=2), start_new_session=True)
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if "iter 3/" in line:
      os.killpg(proc.pid, signal.SIGINT)
      break
  output = "".join(lines) + proc.communicate(timeout=120)[0]
  assert proc.returncode == 0, output[-3000:]
  assert "stopped by SIGINT at iter" in output and "Traceback" not in output, output[-3000:]
  assert checkpoint_steps(out_dir) == [records(out_dir, "train")[-1]["iter"] + 1]


@pytest.mark.parametrize("workers", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_an_id_past_the_vocabulary_found_mid_run_saves_the_iteration_it_reached(
    tmp_path, monkeypatch, workers):
  """Files no meta.json vouches for have each file's first ids checked at the start, the rest
  as their window is read: a bad one, hours in, ends the run with what it trained saved."""
  from jaxgpt import data
  from jaxgpt.prep import shards
  monkeypatch.setattr(data, "VOCAB_CHECK_TOKENS", 64)  # in this process; a worker checks 2^20
  tokens = pattern_tokens(3000)
  tokens[1000] = TINY_VOCAB  # in the stream's window 183, read for iteration 22
  (tmp_path / "data").mkdir()
  shards.write_shard(str(tmp_path / "data" / "x_train_0.bin"), tokens)
  shards.write_shard(str(tmp_path / "data" / "x_val_0.bin"), pattern_tokens(1000, seed=3))
  config = tiny_config(tmp_path, str(tmp_path / "data"), max_iters=100, eval_interval=50,
                       data_workers=workers)
  with pytest.raises(UserError) as refused:
    train.train(config)
  said = re.fullmatch(
      rf"{tmp_path}/data/x_train_0.bin: token id {TINY_VOCAB} >= vocab_size {TINY_VOCAB}, "
      r"past the [\d,]+ ids of each file checked at the start, read for iteration (\d+); "
      r"iteration \1 is saved: add --config.init_from=resume to go on \(remake the file with "
      r"python -m jaxgpt.prepare, or remove it\)", str(refused.value))
  assert said, refused.value
  reached = int(said[1])
  assert 0 < reached < 100 and checkpoint_steps(config.out_dir) == [reached]
  assert [r["iter"] for r in records(config.out_dir, "train")] == list(range(reached))


# launch.py, held before iteration 4's batch until the test has killed a data worker: the run
# trains 30 steps in a tenth of a second, and finished before a kill the test sent on reading
# "iter 3/" (a loaded machine's scheduling) landed.
HOLD_FOR_THE_KILL = """
import os, runpy, sys, time
from jaxgpt import train
real_next_batch = train._Loop.next_batch

def next_batch(loop, it):
  if it == 4:
    print("held for the kill", flush=True)
    while not os.path.exists(os.environ["KILLED"]):
      time.sleep(0.01)
  return real_next_batch(loop, it)

train._Loop.next_batch = next_batch
sys.argv[0] = "launch.py"
runpy.run_path("launch.py", run_name="__main__")
"""


@pytest.mark.slow  # three launch.py runs with two data workers each: 30 s on 2 cores
def test_a_data_worker_killed_under_the_run_saves_it_for_an_exact_resume(tmp_path, token_dir):
  """The OOM killer may pick a Grain worker: the run saves the iteration it reached and ends on
  one error line (it was a traceback, and every iteration since the last checkpoint lost),
  and the resume trains on as an unbroken run does."""
  config = write_config_file(tmp_path, token_dir, max_iters=30, eval_interval=100000,
                             lr_decay_iters=30, data_workers=2)
  out_dir = str(tmp_path / "run")
  killed = tmp_path / "killed"
  proc = start_python("-c", HOLD_FOR_THE_KILL, f"--config={config}", env={"KILLED": str(killed)})
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if "held for the kill" in line:
      try:
        workers = [pid for pid, cmdline in children(proc.pid).items() if b"spawn_main" in cmdline]
        os.kill(workers[0], signal.SIGKILL)
      finally:
        killed.touch()  # never a run left waiting
      break
  output = "".join(lines) + proc.communicate(timeout=120)[0]
  errors = [line for line in output.splitlines() if line.startswith("error:")]
  assert proc.returncode == 1 and "Traceback" not in output, output[-3000:]
  reached = records(out_dir, "train")[-1]["iter"] + 1
  said = (f"error: a data worker process ended under the run at iteration {reached} (killed "
          f"by SIGKILL: the OOM killer's, say); iteration {reached} is saved: add "
          "--config.init_from=resume to go on (fewer data_workers use less memory; 0 reads in "
          "a thread of the run)")
  assert errors == [said]
  assert checkpoint_steps(out_dir) == [reached] and reached < 30
  resumed = run_python("launch.py", f"--config={config}", "--config.init_from=resume")
  unbroken = run_python("launch.py", f"--config={config}",
                        f"--config.out_dir={tmp_path / 'unbroken'}")
  assert resumed.returncode == 0 == unbroken.returncode, resumed.stderr[-3000:]
  losses = lambda d: {r["iter"]: r["loss"] for r in records(str(d), "train")}
  assert losses(out_dir) == losses(tmp_path / "unbroken") and len(losses(out_dir)) == 30


def _catches(pid: int, sig: int) -> bool:
  """Whether process `pid` has a handler of its own for `sig` (its SigCgt mask, in /proc)."""
  try:
    with open(f"/proc/{pid}/status") as f:
      mask = next(line.split()[1] for line in f if line.startswith("SigCgt:"))
  except (OSError, StopIteration):
    return False
  return bool(int(mask, 16) >> (sig - 1) & 1)


# launch.py, held as it first imports tensorstore (Orbax's, seconds after launch.py's first
# lines) until the test has sent SIGTERM: a poll for the handler, then a SIGSTOP, failed where
# the test was scheduled late.
HOLD_IN_THE_IMPORTS = """
import os, runpy, sys, time

class Hold:
  def find_spec(self, name, path=None, target=None):
    if name == "tensorstore":
      sys.meta_path.remove(self)
      print("held in the imports", flush=True)
      while not os.path.exists(os.environ["SIGNALLED"]):
        time.sleep(0.01)

sys.meta_path.insert(0, Hold())
sys.argv[0] = "launch.py"
runpy.run_path("launch.py", run_name="__main__")
"""


@pytest.mark.slow
def test_a_stop_while_the_libraries_load_is_one_line_and_exit_0(tmp_path, token_dir):
  """SIGTERM while the libraries load (here, as Orbax imports tensorstore) ends the run with
  one line: a handler installed only once the libraries had loaded let it kill python (rc
  -15), or stopped it with a traceback."""
  signalled = tmp_path / "signalled"
  proc = start_python("-c", HOLD_IN_THE_IMPORTS,
                      f"--config={write_config_file(tmp_path, token_dir)}",
                      env={"SIGNALLED": str(signalled)})
  try:
    for line in proc.stdout:
      if "held in the imports" in line:
        assert _catches(proc.pid, signal.SIGTERM), "SIGTERM caught only after the imports"
        proc.send_signal(signal.SIGTERM)
        break
    signalled.touch()  # the run goes on, to its stop
    output = proc.communicate(timeout=120)[0]
  finally:
    proc.kill()
    proc.wait(timeout=60)
  assert proc.returncode == 0, output[-2000:]
  assert "stopped by SIGTERM before the first step" in output
  assert "Traceback" not in output


def test_a_stop_after_training_is_only_logged(monkeypatch, caplog):
  """The run has saved; a signal while it closes must not end it with a traceback."""
  monkeypatch.setattr(preemption, "_trained", False)
  before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
  try:
    preemption.handle_stops_until_training()
    with pytest.raises(preemption.StopBeforeTraining):
      os.kill(os.getpid(), signal.SIGTERM)
    with preemption.StopSignals():
      pass
    with caplog.at_level("WARNING", logger="absl"):
      os.kill(os.getpid(), signal.SIGTERM)
    assert "received SIGTERM after training" in caplog.text
  finally:
    for sig, handler in before.items():
      signal.signal(sig, handler)


def _install(handlers: str, stack: contextlib.ExitStack) -> type[BaseException]:
  """The handlers named, in place; what they raise."""
  if handlers == "before training":
    preemption.handle_stops_until_training()
    return preemption.StopBeforeTraining
  if handlers in ("a command's Ctrl-C", "a command's SIGTERM"):
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, cli._terminate)
    return cli._Terminated if handlers.endswith("SIGTERM") else KeyboardInterrupt
  signals = stack.enter_context(preemption.StopSignals())
  signals.received = signal.SIGINT
  return KeyboardInterrupt


@pytest.mark.parametrize("handlers", ["before training", "a command's Ctrl-C",
                                      "a command's SIGTERM", "a second Ctrl-C"])
def test_a_stop_that_comes_in_a_gc_callback_is_raised_past_it(monkeypatch, handlers):
  """JAX runs a callback at every garbage collection, and Python prints and drops an exception
  raised in one: a Ctrl-C there had the run train to its end (or a sample print its text)."""
  monkeypatch.setattr(preemption, "_trained", False)
  monkeypatch.setattr(preemption, "_raised", False)
  monkeypatch.setattr(sys, "unraisablehook", cli._unraisable)
  before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
  signum = signal.SIGTERM if handlers.endswith("SIGTERM") else signal.SIGINT
  sent = []

  def callback(phase: str, info: dict) -> None:
    if phase == "start" and not sent:
      sent.append(signum)
      os.kill(os.getpid(), signum)
      for _ in range(1000):  # the handler runs in here, if not in os.kill
        pass

  try:
    with contextlib.ExitStack() as stack:
      expected = _install(handlers, stack)
      gc.callbacks.append(callback)
      with pytest.raises(expected):
        gc.collect()
        time.sleep(5)  # for the signal sent again
  finally:
    gc.callbacks.remove(callback)
    for sig, handler in before.items():
      signal.signal(sig, handler)
  assert sent


def test_a_stop_sent_again_after_its_work_has_ended_ends_nothing(monkeypatch):
  """`cli.sigterm_stops` gives SIGTERM back its default as the work ends: the signal sent again
  then would kill a command that did its work, as one that failed."""
  previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
  try:
    with mock.patch.object(os, "kill") as kill:
      preemption._resend(signal.SIGTERM)
    kill.assert_not_called()
  finally:
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.slow
def test_ctrl_c_while_the_data_is_being_made_ends_the_run_at_once(tmp_path):
  """Before training there is nothing to save: a stop ends data preparation (hours for
  FineWeb), here a wait for another process making the data, in one line."""
  data_dir = tmp_path / "python_docs"
  data_dir.mkdir()
  with open(data_dir / ".prepare.lock", "w") as held:
    fcntl.flock(held, fcntl.LOCK_EX)  # another process is making the data
    proc = start_launch(write_config_file(tmp_path, str(data_dir), dataset="python_docs"))
    lines = []
    for line in proc.stdout:
      lines.append(line)
      if "waiting for another process making the data" in line:
        proc.send_signal(signal.SIGINT)
        break
    output = "".join(lines) + proc.communicate(timeout=60)[0]
  assert proc.returncode == 0, output[-2000:]
  assert "stopped by SIGINT before the first step: nothing to save" in output
  assert "Traceback" not in output


def test_shared_memory_left_in_flight_is_not_warned_of_as_leaked(tmp_path):
  """What a stop leaves of Grain's batches, made here on purpose: the resource tracker still
  removes it, without its warning after the command's last line (cpython#82300)."""
  script = tmp_path / "in_flight.py"
  script.write_text("from multiprocessing import shared_memory\nfrom jaxgpt import cli\n\n"
                    "def main():\n  block = shared_memory.SharedMemory(create=True, size=64)\n"
                    "  print(block.name)\n\ncli.run(main)\n")
  r = run_python(str(script))
  assert r.returncode == 0 and r.stderr == "", r.stderr
  assert not os.path.exists(f"/dev/shm/{r.stdout.strip().lstrip('/')}")  # removed all the same


def test_out_of_device_memory_is_one_error_line(tmp_path):
  """XLA's RESOURCE_EXHAUSTED (sample's --batch_rows, say, too large for the card) is no bug."""
  script = tmp_path / "too_large.py"
  script.write_text("import jax.numpy as jnp\nfrom jaxgpt import cli\n\n"
                    "def main():\n  jnp.zeros((2**50,), jnp.uint8).block_until_ready()\n\n"
                    "cli.run(main)\n")
  r = run_python(str(script))
  assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
  assert r.stderr.startswith("error: out of device memory (RESOURCE_EXHAUSTED: Out of memory "
                             "allocating 1125899906842624 bytes.); a smaller batch may fit")
  assert len(r.stderr.strip().splitlines()) == 1


def test_a_full_quota_is_one_error_line(monkeypatch):
  """EDQUOT (a cluster's quota) is a full disk as ENOSPC is: one line, no traceback."""
  monkeypatch.setattr(cli, "_quiet_log", lambda: None)
  monkeypatch.setattr(preemption, "_raised", False)

  def main(argv):
    raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), "/scratch/run/metrics.jsonl")

  with pytest.raises(SystemExit) as e:
    cli._guarded(main)([])
  assert e.value.code == (f"error: writing /scratch/run/metrics.jsonl failed "
                          f"({os.strerror(errno.EDQUOT)})")


@pytest.mark.slow
def test_a_non_finite_stop_through_the_cli_is_one_error_line(tmp_path, token_dir):
  """The error is the last line: with data workers, no warning of "leaked" shared memory
  (batches the error left in reference cycles) follows it."""
  config_file = write_config_file(tmp_path, token_dir, max_iters=10, learning_rate=1e12,
                                  min_lr=1e11, warmup_iters=0, data_workers=2)
  r = run_python("launch.py", f"--config={config_file}")
  assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
  errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and "non-finite loss or gradient" in errors[0]
  assert r.stderr.splitlines()[-1] == errors[0], r.stderr[-2000:]


@pytest.mark.slow
def test_a_built_in_dataset_dir_with_shards_but_no_meta_trains_from_them(tmp_path, token_dir):
  import launch
  config = tiny_config(tmp_path, token_dir, dataset="python_docs", max_iters=2, eval_interval=2)
  launch.run(config)  # the shards are read as they are: nothing to make, nothing refused
  assert records(config.out_dir, "eval")[-1]["iter"] == 2


@pytest.mark.slow
def test_a_restore_names_the_arrays_that_differ_from_their_fingerprints(tmp_path, token_dir):
  config = tiny_config(tmp_path, token_dir, max_iters=10, **EVERY_10)
  train.train(config)
  state, meta = restore_state(config, 10)  # as saved: it verifies
  wte = next(path for path in meta[checkpoint.FINGERPRINTS] if "wte" in path)
  meta[checkpoint.FINGERPRINTS][wte] += 1
  with pytest.raises(checkpoint.CorruptCheckpoint, match=r"1 array\(s\) differ .*wte") as e:
    checkpoint.verify(state, meta)
  assert checkpoint.cause(e.value).startswith("its contents changed after the save: 1 array")


def test_a_resume_that_drops_the_clipping_state_is_refused_naming_that_key_alone(tmp_path):
  """grad_clip 1.0 -> 0 gives the train state another structure; max_iters, changed beside it,
  does not, and is not named as the cause."""
  saved = tiny_config(tmp_path, "").to_dict()
  with pytest.raises(UserError) as e:
    resume.check_resumable(saved, tiny_config(tmp_path, "", grad_clip=0.0, max_iters=12))
  assert "with grad_clip: checkpoint 1.0 vs config 0.0 the train state has another " \
         "structure" in str(e.value)
  assert "max_iters" not in str(e.value)


def test_a_resume_under_a_longer_schedule_warns_that_the_learning_rate_jumps(tmp_path, token_dir,
                                                                           caplog):
  kw = {"eval_interval": 2, "warmup_iters": 1}
  train.train(tiny_config(tmp_path, token_dir, max_iters=2, lr_decay_iters=4, **kw))
  with caplog.at_level(logging.WARNING, logger="absl"):
    train.train(tiny_config(tmp_path, token_dir, max_iters=4, lr_decay_iters=8,
                            init_from="resume", **kw))
  assert "resume: the learning rate of iteration 2 is " in caplog.text
  assert "under the changed schedule (lr_decay_iters 4 -> 8)" in caplog.text
  assert "to keep the checkpoint's: --config.lr_decay_iters=4" in caplog.text
