"""The train step and the loop: accumulation, learning, one compilation, logs."""

from __future__ import annotations

import itertools
import logging
import os
import threading
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import (
  build_state,
  checkpoint_steps,
  guard_loop_transfers,
  pattern_tokens,
  pattern_windows,
  read_jsonl,
  recipe,
  records,
  run_python,
  step_of,
  tiny_config,
  write_config_file,
)

import launch
from jaxgpt import data, preemption, sharding, summary, train, train_step
from jaxgpt.errors import UserError
from jaxgpt.prep import shards
from jaxgpt.run_dir import RunDir


def test_micro_batches_give_the_update_of_one_big_batch(tmp_path):
  k, b = 4, 2
  config = tiny_config(tmp_path, "", grad_clip=1.0, dropout=0.0)
  setup, state = build_state(config)
  batch = pattern_windows(k * b, config.block_size)
  step_fn = train_step.make_train_step(setup.model, setup.tx)
  state_k, m_k = step_fn(state, jnp.asarray(batch.reshape(k, b, -1)))
  state = setup.new_state()  # the first state was donated
  state_1, m_1 = step_fn(state, jnp.asarray(batch.reshape(1, k * b, -1)))
  np.testing.assert_allclose(m_k["loss"], m_1["loss"], rtol=1e-6)
  np.testing.assert_allclose(m_k["grad_norm"], m_1["grad_norm"], rtol=1e-5)
  # Adam divides by |g|: an element whose gradient is ~0 can move by float noise,
  # so params are compared to 1e-4 of the step size (lr = 1e-2).
  for a, c in zip(jax.tree.leaves(state_k.params), jax.tree.leaves(state_1.params)):
    np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)


def test_step_compiles_once(tmp_path):
  config = tiny_config(tmp_path, "")
  setup, state = build_state(config)
  step_fn = train_step.make_train_step(setup.model, setup.tx)
  batch = jnp.asarray(pattern_windows(8, config.block_size).reshape(2, 4, -1))
  for _ in range(4):
    state, _ = step_fn(state, batch)
  assert step_fn._cache_size() == 1


def test_a_few_hundred_steps_drive_the_loss_down(tmp_path):
  config = tiny_config(tmp_path, "", warmup_iters=10, lr_decay_iters=300, max_iters=300)
  setup, state = build_state(config)
  step_fn = train_step.make_train_step(setup.model, setup.tx)
  data = pattern_windows(400, config.block_size, seed=7)
  rng = np.random.default_rng(0)
  losses = []
  for _ in range(300):
    idx = rng.integers(0, len(data), size=8)
    state, m = step_fn(state, jnp.asarray(data[idx].reshape(2, 4, -1)))
    losses.append(float(m["loss"]))
  assert losses[0] > 4.0  # about ln(96)
  assert np.mean(losses[-20:]) < 0.6 * np.mean(losses[:5])


def dropout_batch(tmp_path):
  """A config with dropout whose params never move (a rate of 0: only the masks can change a
  loss), and one micro-batch of 4 windows."""
  config = tiny_config(tmp_path, "", dropout=0.3, learning_rate=0.0, min_lr=0.0)
  return config, jnp.asarray(pattern_windows(4, config.block_size)[None])


@pytest.mark.slow
def test_dropout_masks_differ_per_step_but_are_reproducible(tmp_path):
  config, one = dropout_batch(tmp_path)
  runs = []
  for _ in range(2):
    setup, state = build_state(config)
    step_fn = train_step.make_train_step(setup.model, setup.tx)
    losses = []
    for _ in range(3):
      state, m = step_fn(state, one)
      losses.append(float(m["loss"]))
    runs.append(losses)
  assert runs[0] == runs[1]
  assert len(set(runs[0])) == 3  # each step its own masks


def test_each_micro_batch_draws_its_own_dropout_masks(tmp_path):
  """Twice the same micro-batch: the same loss as once, unless the second has masks of its own."""
  config, one = dropout_batch(tmp_path)
  setup, state = build_state(config)
  step_fn = train_step.make_train_step(setup.model, setup.tx)
  once = step_fn(state, one)[1]["loss"]  # the state is donated: the second gets a new one
  twice = step_fn(setup.new_state(), jnp.concatenate([one, one]))[1]["loss"]
  assert float(twice) != float(once)


def count_compiles(fn) -> int:
  """Backend compilations while `fn` runs."""
  events, listening = [], [True]

  def listener(name, *args, **kwargs):
    if listening[0]:
      events.append(name)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    fn()
  finally:
    listening[0] = False  # jax < 0.7 has no public way to unregister a listener
    if hasattr(jax.monitoring, "unregister_event_duration_listener"):
      jax.monitoring.unregister_event_duration_listener(listener)
  return sum(1 for e in events if e == "/jax/core/compile/backend_compile_duration")


@pytest.mark.slow
def test_loop_compiles_the_same_programs_however_long_it_runs(tmp_path, token_dir):
  run = lambda name, iters: train.train(tiny_config(tmp_path / name, token_dir, max_iters=iters))
  run("warmup", 2)  # fills jax's caches of small eager ops
  short = count_compiles(lambda: run("short", 4))
  long = count_compiles(lambda: run("long", 12))
  assert 0 < short == long


def test_training_run_logs_metrics_and_learns(tmp_path, token_dir):
  config = tiny_config(tmp_path, token_dir, max_iters=60, eval_interval=20, log_interval=10,
                       lr_decay_iters=60)
  losses = train.train(config)
  evals, logs = records(config.out_dir, "eval"), records(config.out_dir, "train")
  assert [r["iter"] for r in evals] == [0, 20, 40, 60]
  assert [r["iter"] for r in logs] == [0, 10, 20, 30, 40, 50]
  assert logs[0]["tokens"] == 2 * 4 * 16
  for key in ("loss", "lr", "grad_norm", "ms_per_iter", "tokens_per_sec", "mfu"):
    assert key in logs[0]
  assert evals[-1]["val_loss"] == pytest.approx(losses["val"])
  assert evals[-1]["val_loss"] < 0.7 * evals[0]["val_loss"]
  assert os.path.isfile(os.path.join(config.out_dir, "config.json"))


def test_eval_only_evaluates_once_and_compiles_no_train_step(tmp_path, token_dir, caplog):
  config = tiny_config(tmp_path, token_dir, eval_only=True)
  with caplog.at_level(logging.INFO):
    train.train(config)
  assert [r["event"] for r in read_jsonl(RunDir(config.out_dir).metrics_path)] == ["eval"]
  assert "train step compiled" not in caplog.text  # seconds to minutes on a GPU, for nothing


def test_a_resume_that_only_evaluates_logs_the_plan_of_an_evaluation(tmp_path, token_dir,
                                                                    caplog, monkeypatch):
  """A stop saved step 4 of max_iters=4 unevaluated; its resume evaluates it and trains
  nothing, so it logs the model's size of the plan and the changes an evaluation reads, as
  eval_only does (it logged the tokens per iteration, epochs, schedule and MFU of a training it
  does not do, and where the data would go on under another batch layout)."""
  monkeypatch.setattr(preemption.StopSignals, "stop_at", lambda self, it: it == 4)
  config = tiny_config(tmp_path, token_dir, max_iters=4, eval_interval=4)
  train.train(config)
  monkeypatch.undo()
  assert [r["iter"] for r in records(config.out_dir, "eval")] == [0]
  caplog.clear()
  with caplog.at_level(logging.INFO):
    train.train(tiny_config(tmp_path, token_dir, max_iters=4, eval_interval=4,
                            init_from="resume", batch_size=2, eval_iters=1))
  assert [r["iter"] for r in records(config.out_dir, "eval")] == [0, 4]
  assert [m for m in caplog.messages if m.startswith("resume:")] == [
      "resume: eval_iters changed from 2 to 1",
      "resume: eval_iters changed, so the val loss is over other windows than the run's before"]
  plan = [r.getMessage() for r in caplog.records  # and the plan's warnings, as eval_only's
          if r.levelno == logging.INFO and r.getMessage().startswith(("plan: ", "MFU: "))]
  assert len(plan) == 1 and plan[0].startswith("plan: parameters:"), plan


def test_a_run_that_only_evaluates_leaves_out_the_warnings_of_a_training(tmp_path, token_dir,
                                                                         caplog):
  """The schedule's and the epochs' warnings are of a training; an eval_only run (or a resume
  at max_iters) trains nothing, so it said them of nothing."""
  config = tiny_config(tmp_path, token_dir, eval_only=True, max_iters=500, lr_decay_iters=400,
                       warmup_iters=100)  # 12.8 epochs of 5,000 train tokens
  with caplog.at_level(logging.WARNING):
    train.train(config)
  assert "plan:" not in caplog.text


def test_a_val_split_smaller_than_an_evaluation_is_said_to_repeat(tmp_path, token_dir, caplog):
  config = tiny_config(tmp_path, token_dir, eval_only=True, eval_iters=20)  # 80 of 62 windows
  with caplog.at_level(logging.WARNING):
    train.train(config)
  assert "the val split holds 62 windows, so each evaluation scores each about 1.3 times; " \
         "lower eval_iters (now 20)" in caplog.text
  caplog.clear()
  config = tiny_config(tmp_path, token_dir, eval_only=True, eval_iters=1, batch_size=80,
                       out_dir=str(tmp_path / "wide"))  # one batch of 80 windows is too many
  with caplog.at_level(logging.WARNING):
    train.train(config)
  assert "about 1.3 times; lower batch_size (one evaluation batch is 80 windows)" in caplog.text


def test_a_recipe_file_named_for_another_size_is_warned_of_with_warnings_alone(tmp_path,
                                                                              token_dir):
  """--verbosity=-1 (absl's warnings alone, which launch.py raises to INFO when not asked)."""
  recipe_file = tmp_path / "tiny_40m.py"
  os.rename(write_config_file(tmp_path, token_dir, eval_only=True), recipe_file)
  r = run_python("launch.py", f"--config={recipe_file}", "--verbosity=-1")
  assert r.returncode == 0, r.stderr
  assert f"plan: config '{recipe_file}' says 40m but the model has" in r.stderr
  assert "plan: parameters:" not in r.stderr  # an INFO line


@pytest.mark.slow
def test_quickstart_recipe_brings_val_loss_under_60_percent_of_its_start(tmp_path):
  """The README's first command, as shipped: about 3 minutes on 2 CPU cores."""
  config = recipe("quickstart")
  config.out_dir, config.data_dir = str(tmp_path / "run"), str(tmp_path / "python_docs")
  config.sample_tokens = 0
  launch.run(config)
  evals = records(config.out_dir, "eval")
  assert evals[0]["val_loss"] == pytest.approx(10.8, abs=0.15)
  assert evals[-1]["iter"] == config.max_iters
  assert evals[-1]["val_loss"] <= 0.6 * evals[0]["val_loss"]


def test_between_log_points_the_loop_never_waits_for_the_device(tmp_path, token_dir,
                                                                 monkeypatch):
  """No device-to-host transfer in the loop but the log interval's one, fetched a step late."""
  guard_loop_transfers(monkeypatch)
  config = tiny_config(tmp_path, token_dir, max_iters=20, log_interval=5, eval_interval=20,
                       lr_decay_iters=20)
  train.train(config)
  assert [r["iter"] for r in records(config.out_dir, "train")] == [0, 5, 10, 15]


def test_after_its_first_evaluations_and_save_the_loop_compiles_nothing(tmp_path, token_dir,
                                                                         monkeypatch, caplog):
  """The step is compiled before the loop; the evaluation and the save compile once each (at
  iterations 0 and 3): from the third evaluation on, nothing is compiled again."""
  marks = []  # how many log records there were at each evaluation
  evaluate = train._Loop.eval_and_save
  monkeypatch.setattr(train._Loop, "eval_and_save",
                      lambda self, it: (marks.append(len(caplog.records)), evaluate(self, it))[1])
  config = tiny_config(tmp_path, token_dir, max_iters=9, eval_interval=3, log_interval=1,
                       lr_decay_iters=9)
  with jax.log_compiles(), caplog.at_level(logging.WARNING):
    train.train(config)
  compiles = [(i, r.getMessage()[:80]) for i, r in enumerate(caplog.records)
              if r.getMessage().startswith("Compiling")]
  later = [message for i, message in compiles if i >= marks[2]]
  assert len(marks) == 4 and compiles and later == []


def test_logged_speed_is_tokens_per_iter_over_the_time_per_iteration(tmp_path, token_dir,
                                                                     monkeypatch):
  """On a clock that moves 1 s at each reading (the loop reads it at log points alone), a log 10
  iterations after the last reads 100 ms per iteration, and tokens_per_sec counts every
  micro-batch's tokens."""
  clock = itertools.count()
  monkeypatch.setattr(train, "time", types.SimpleNamespace(perf_counter=lambda: float(next(clock))))
  config = tiny_config(tmp_path, token_dir, max_iters=30, log_interval=10, eval_interval=30,
                       lr_decay_iters=30)
  train.train(config)
  logs = {r["iter"]: r for r in records(config.out_dir, "train")}
  tokens_per_iter = (config.gradient_accumulation_steps * config.batch_size * config.block_size
                     * jax.device_count())
  for it in (10, 20):
    assert logs[it]["ms_per_iter"] == 100.0
    assert logs[it]["tokens_per_sec"] == tokens_per_iter / 0.1


def test_a_log_before_an_evaluation_times_its_own_step(tmp_path, token_dir, monkeypatch):
  """On several processes agreeing on failures waits for the step just queued (a collective
  behind it); the log taken after it timed two steps, and the next, before the evaluation,
  almost nothing (0.3 ms/iter, MFU over 1000%)."""
  real = train._Loop.check_failures

  def waits_like_a_collective(self, **kwargs):
    jax.block_until_ready(self.state)
    real(self, **kwargs)

  monkeypatch.setattr(train._Loop, "check_failures", waits_like_a_collective)
  config = tiny_config(tmp_path, token_dir, max_iters=12, log_interval=1, eval_interval=4,
                       lr_decay_iters=12, n_layer=4, n_embd=256, block_size=64)  # steps > log
  train.train(config)
  ms = {r["iter"]: r["ms_per_iter"] for r in records(config.out_dir, "train")}
  typical = float(np.median(list(ms.values())))
  assert all(ms[it] > 0.05 * typical for it in (3, 7, 11)), ms  # the logs before evaluations


def cpu_need(config) -> int:
  """XLA's plan (bytes) of the config's train step compiled for this CPU, as the loop compiles."""
  return train_step.memory_need(train_step.compile_on(step_of(config), sharding.make_mesh())).total


@pytest.mark.parametrize("fits", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_a_step_that_will_not_fit_stops_before_training_naming_a_layout_that_fits(
    tmp_path, token_dir, monkeypatch, fits):
  config = tiny_config(tmp_path, token_dir, batch_size=4, gradient_accumulation_steps=2)
  smaller = tiny_config(tmp_path, token_dir, batch_size=2, gradient_accumulation_steps=4)
  need, smaller_need = cpu_need(config), cpu_need(smaller)
  assert smaller_need < need
  room = (smaller_need + need) // 2 if fits else 1  # bytes, as a GPU's allocator would say
  monkeypatch.setattr(train_step, "device_room", lambda state: room)
  with pytest.raises(UserError) as e:
    train.train(config)
  assert f"the train step needs {need / 2**30:.2f} GiB per device" in str(e.value)
  assert f"has {room / 2**30:.2f} GiB for it" in str(e.value)
  if fits:
    assert ("the same tokens per iteration fit with --config.batch_size=2 "
            "--config.gradient_accumulation_steps=4 (") in str(e.value)
  else:
    assert "no smaller micro-batch or remat fits" in str(e.value)
  assert not os.path.exists(os.path.join(config.out_dir, "config.json"))
  assert not os.path.exists(os.path.join(config.out_dir, "metrics.jsonl"))


def test_max_iters_zero_evaluates_the_init_at_a_finite_rate_and_suggests_no_sample(
    tmp_path, token_dir, caplog):
  """No iteration to train: no schedule to span (warmup and decay both 0), no checkpoint."""
  config = tiny_config(tmp_path, token_dir, max_iters=0, warmup_iters=0, lr_decay_iters=0)
  with caplog.at_level(logging.INFO):
    train.train(config)
  [evaluation] = records(config.out_dir, "eval")
  assert evaluation["iter"] == 0 and evaluation["lr"] == pytest.approx(config.min_lr)
  assert "done: no checkpoint in" in caplog.text and "jaxgpt.sample" not in caplog.text


def test_the_loss_is_each_token_predicting_the_next(tmp_path):
  """nanoGPT's x, y: the logits of a window's first block_size tokens against its last."""
  config = tiny_config(tmp_path, "")
  setup, state = build_state(config)
  windows_BT1 = jnp.asarray(pattern_windows(4, config.block_size))
  logits_BTV = setup.model.apply({"params": state.params}, windows_BT1[:, :-1])
  expected = optax.softmax_cross_entropy_with_integer_labels(logits_BTV, windows_BT1[:, 1:])
  np.testing.assert_allclose(train_step.loss(setup.model, state.params, windows_BT1, None),
                             expected.mean(), rtol=1e-6)


def test_the_val_loss_is_the_mean_over_the_val_splits_windows(tmp_path):
  """A val split of exactly one evaluation's windows (eval_iters x batch_size): the val loss of
  the init is the mean loss of those windows, each once."""
  config = tiny_config(tmp_path, str(tmp_path / "data"), max_iters=0, warmup_iters=0,
                       lr_decay_iters=0)
  n_windows = config.eval_iters * config.batch_size * jax.device_count()
  val_tokens = pattern_tokens(n_windows * config.block_size + 1, seed=3)
  os.makedirs(config.data_dir)
  shards.write_shard(os.path.join(config.data_dir, "syn_train_000000.bin"),
                     pattern_tokens(3000, seed=1))
  shards.write_shard(os.path.join(config.data_dir, "syn_val_000000.bin"), val_tokens)
  train.train(config)
  [evaluation] = records(config.out_dir, "eval")
  setup, state = build_state(config)
  windows_BT1 = np.lib.stride_tricks.sliding_window_view(val_tokens, config.block_size + 1)[
      ::config.block_size]
  assert len(windows_BT1) == n_windows
  expected = train_step.loss(setup.model, state.params, jnp.asarray(windows_BT1), None)
  assert evaluation["val_loss"] == pytest.approx(float(expected), rel=1e-6)


@pytest.mark.parametrize("vocab_size,sampled", [(96, False), (50304, True)])
def test_the_run_ends_with_the_commands_that_read_it(tmp_path, token_dir, caplog, vocab_size,
                                                    sampled):
  """`sample` spells tokens with GPT-2's BPE: a character-level run is not pointed at it. The
  prompt is the closing sample's, '' (a new document) too: sample's own default is nanoGPT's."""
  config = tiny_config(tmp_path, token_dir, max_iters=2, eval_interval=2, warmup_iters=1,
                       lr_decay_iters=2, vocab_size=vocab_size)
  with caplog.at_level(logging.INFO):
    train.train(config)
  [done] = [m for m in caplog.messages if m.startswith("done: ")]
  assert done.startswith("done: the checkpoint of step 2 in ")
  assert done.endswith(f"python -m jaxgpt.report --out_dir={config.out_dir}")
  assert ("python -m jaxgpt.sample" in done) == sampled
  assert (f"jaxgpt.sample --out_dir={config.out_dir} --start='' " in done) == sampled


def test_the_train_splits_evaluation_is_not_the_first_iterations_windows(tmp_path, token_dir):
  """Training's shuffle would hand the evaluation the windows iteration 0 trains on (here the
  same 8): their loss at step 0 is iteration 0's, to the bit."""
  config = tiny_config(tmp_path, token_dir, max_iters=1, eval_interval=1, warmup_iters=0)
  train.train(config)
  [first_step] = records(config.out_dir, "train")
  assert records(config.out_dir, "eval")[0]["train_loss"] != first_step["loss"]
  assert data.eval_seed(config.seed, "val") == config.seed  # the val windows are as they were


def test_a_home_relative_out_dir_and_data_dir_are_the_home_directorys(tmp_path, token_dir,
                                                                      monkeypatch):
  """`--config.out_dir=~/run` reaches the run unexpanded (a shell expands no ~ after '=')."""
  home, cwd = tmp_path / "home", tmp_path / "cwd"
  (home / "data").parent.mkdir()
  os.symlink(token_dir, home / "data")
  cwd.mkdir()
  monkeypatch.setenv("HOME", str(home))
  monkeypatch.chdir(cwd)
  train.train(tiny_config(tmp_path, "~/data", out_dir="~/run", max_iters=2, eval_interval=2,
                          warmup_iters=0, lr_decay_iters=2))
  assert os.listdir(home / "run" / "checkpoints") and os.listdir(cwd) == []


def test_the_eta_is_for_the_iterations_left(tmp_path, token_dir, monkeypatch):
  calls, real = [], summary.eta
  monkeypatch.setattr(summary, "eta", lambda *a: calls.append(a) or real(*a))
  config = tiny_config(tmp_path, token_dir)  # log_interval=1: the ETA at the second log, it=1
  train.train(config)
  [(iters_left, tokens_per_iter, _, _)] = calls
  assert iters_left == config.max_iters - 1 - 1
  assert tokens_per_iter == 2 * 4 * 16 * jax.device_count()


def test_a_layout_that_fits_only_with_remat_is_found(tmp_path):
  step = step_of(tiny_config(tmp_path, ""))  # batch 4 x accum 2, remat none
  assert step.with_layout(4, 2, "full").model.remat == "full"
  found = train_step.fitting_layout(step, 10, lambda s: 0 if s.model.remat == "full" else 100)
  assert found == ("--config.remat=full", 0)


# The state's own bytes count in the step's need: the room adds them back.
def test_the_room_adds_back_what_the_state_holds_on_the_fullest_device(monkeypatch):
  devices = [types.SimpleNamespace(memory_stats=lambda used=used: {
      "bytes_limit": 1000, "bytes_in_use": used}) for used in (300, 500)]
  monkeypatch.setattr(train_step.jax, "local_devices", lambda: devices)
  shard = lambda d, n: types.SimpleNamespace(device=d, data=types.SimpleNamespace(nbytes=n))
  state = [types.SimpleNamespace(addressable_shards=[shard(devices[0], 100),
                                                     shard(devices[1], 200)])]
  assert train_step.device_room(state) == min(1000 - 300 + 100, 1000 - 500 + 200)


GiB = 2**30
# Two processes' (stats, need): one keeps no statistics; mixed cards whose plans differ.
NO_STATISTICS = {"a": ({"bytes_limit": 80 * GiB, "bytes_in_use": 0}, 39 * GiB),
                 "b": ({}, 41 * GiB)}
PLANS_DIFFER = {"a": ({"bytes_limit": 40 * GiB, "bytes_in_use": 0}, 39 * GiB),
                "b": ({"bytes_limit": 80 * GiB, "bytes_in_use": 0}, 41 * GiB)}


@pytest.mark.parametrize("processes", [NO_STATISTICS, PLANS_DIFFER])
def test_processes_decide_alike_whether_the_step_fits(monkeypatch, processes):
  """Each process took its own branch: one whose device keeps no memory statistics returned
  before the gather of the others' rooms, and one whose own plan needs more than the least
  room stopped alone; the others waited at the first step. Two threads stand for them."""
  own = lambda: processes[threading.current_thread().name]
  monkeypatch.setattr(train_step.jax, "local_devices", lambda: [types.SimpleNamespace(
      memory_stats=lambda: own()[0], device_kind="GPU")])
  monkeypatch.setattr(train_step, "memory_need", lambda compiled: train_step.Need(0, 0, own()[1]))
  monkeypatch.setattr(train_step, "fitting_layout", lambda *args: None)
  monkeypatch.setattr(train_step.jax, "process_count", lambda: 2)
  gathered, everyone = [], threading.Barrier(2, timeout=30)

  def process_allgather(value):
    gathered.append(value)
    everyone.wait()  # a collective: it returns once every process has joined it
    return np.asarray(jnp.asarray(np.stack(gathered)))  # as JAX: int64 as int32, without x64

  monkeypatch.setattr(train_step.multihost_utils, "process_allgather", process_allgather)
  said = {}

  def decide() -> None:
    try:
      train_step.check_memory(None, None, [], None)
      said[threading.current_thread().name] = "fits"
    except UserError as e:
      said[threading.current_thread().name] = str(e)

  threads = [threading.Thread(target=decide, name=name) for name in processes]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert len(gathered) == 2
  if processes is NO_STATISTICS:
    assert said == {"a": "fits", "b": "fits"}
  else:  # the most any needs against the least any has
    assert said["a"] == said["b"]
    assert "needs 41.00 GiB per device and the fullest device of the processes has 40.00 GiB" \
        in said["a"]


def test_the_logged_grad_norm_is_the_gradients_before_clipping(tmp_path):
  config = tiny_config(tmp_path, "", grad_clip=1e-3, dropout=0.0)  # clipping on: norm >> 1e-3
  setup, state = build_state(config)
  batch = jnp.asarray(pattern_windows(8, config.block_size).reshape(1, 8, -1))
  grads = jax.jit(jax.grad(lambda p: train_step.loss(setup.model, p, batch[0], None)))(
      state.params)  # jitted: eager, each op was dispatched alone (6 s of CPU)
  expected = float(optax.tree.norm(grads))
  _, metrics = train_step.make_train_step(setup.model, setup.tx)(state, batch)
  assert expected > 1.0
  assert float(metrics["grad_norm"]) == pytest.approx(expected, rel=1e-5)


def test_a_step_whose_loss_is_finite_but_gradient_is_not_is_dropped(tmp_path, monkeypatch):
  """A loss plus 0 * sqrt(0 * wte): the same finite value, a NaN gradient (0 * inf) for wte;
  the update is dropped and counted, as a non-finite loss's is."""
  real = train_step.loss

  def nan_gradient(model, params, tokens_BT1, rng):
    wte = params["wte"]["embedding"]
    return real(model, params, tokens_BT1, rng) + 0.0 * jnp.sqrt(0.0 * wte.sum())

  monkeypatch.setattr(train_step, "loss", nan_gradient)
  config = tiny_config(tmp_path, "", dropout=0.0)
  setup, state = build_state(config)
  before = jax.tree.map(np.array, state.params)
  batch = jnp.asarray(pattern_windows(8, config.block_size).reshape(2, 4, -1))
  state, metrics = train_step.make_train_step(setup.model, setup.tx)(state, batch)
  assert np.isfinite(float(metrics["loss"])) and not np.isfinite(float(metrics["grad_norm"]))
  assert int(metrics["nonfinite"]) == 1
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(before)):
    np.testing.assert_array_equal(a, b)


def test_each_step_draws_new_dropout_masks(tmp_path):
  """Params that never move (lr 0) and one batch twice: only new masks change the loss. The
  fast half of the slow test_dropout_masks_differ_per_step_but_are_reproducible."""
  config, one = dropout_batch(tmp_path)
  setup, state = build_state(config)
  step_fn = train_step.make_train_step(setup.model, setup.tx)
  state, first = step_fn(state, one)
  _, second = step_fn(state, one)
  assert float(second["loss"]) != float(first["loss"])


def test_an_evaluations_time_is_not_counted_as_training_time(tmp_path, token_dir, monkeypatch):
  """On a clock that moves 1 s at each reading and 10^6 s in each evaluation, the log right
  after the evaluation at 10 times iteration 10 alone (a few seconds), not the evaluation."""
  clock = types.SimpleNamespace(t=itertools.count(), offset=0.0)
  monkeypatch.setattr(train, "time", types.SimpleNamespace(
      perf_counter=lambda: float(next(clock.t)) + clock.offset))
  real = train.val_losses

  def slow_val_losses(*args, **kwargs):
    clock.offset += 1e6
    return real(*args, **kwargs)

  monkeypatch.setattr(train, "val_losses", slow_val_losses)
  config = tiny_config(tmp_path, token_dir, max_iters=20, log_interval=10, eval_interval=10,
                       lr_decay_iters=20)
  train.train(config)
  logs = records(config.out_dir, "train")
  assert [r["iter"] for r in logs] == [0, 10]
  assert all(r["ms_per_iter"] < 1e5 for r in logs), logs


def test_evaluations_record_the_tokens_trained_on_before_them_across_a_new_batch(
    tmp_path, token_dir):
  """Steps 0-1 of 2 x 4 windows of 16 tokens, then 2-3 of 2 x 2 after a resume."""
  kw = {"eval_interval": 2, "lr_decay_iters": 4}
  train.train(tiny_config(tmp_path, token_dir, max_iters=2, **kw))
  config = tiny_config(tmp_path, token_dir, max_iters=4, batch_size=2, init_from="resume", **kw)
  train.train(config)
  per_iter = [2 * 4 * 16 * jax.device_count(), 2 * 2 * 16 * jax.device_count()]
  assert [(r["iter"], r["tokens"]) for r in records(config.out_dir, "eval")] == [
      (0, 0), (2, 2 * per_iter[0]), (4, 2 * per_iter[0] + 2 * per_iter[1])]


def test_a_resume_under_another_batch_evaluates_the_runs_own_windows(tmp_path, token_dir):
  """Saved with batches of 4 (eval_iters 2: 8 windows), evaluated with batches of 2: the same 8
  windows, so the val loss the run recorded for its checkpoint, not one over 4 windows."""
  kw = {"eval_interval": 2, "lr_decay_iters": 4}
  config = tiny_config(tmp_path, token_dir, max_iters=2, **kw)
  train.train(config)
  recorded = records(config.out_dir, "eval")[-1]
  assert recorded["iter"] == 2
  losses = train.train(tiny_config(tmp_path, token_dir, max_iters=2, batch_size=2,
                                   init_from="resume", eval_only=True, **kw))
  assert losses["val"] == pytest.approx(recorded["val_loss"], rel=1e-5)


def test_the_last_iteration_is_evaluated_and_saved_off_the_eval_interval(tmp_path, token_dir):
  """max_iters=5, eval_interval=3: iterations 3 and 4 are not lost."""
  config = tiny_config(tmp_path, token_dir, max_iters=5, eval_interval=3, lr_decay_iters=5)
  losses = train.train(config)
  assert [r["iter"] for r in records(config.out_dir, "eval")] == [0, 3, 5]
  assert records(config.out_dir, "eval")[-1]["val_loss"] == pytest.approx(losses["val"])
  assert checkpoint_steps(config.out_dir) == [3, 5]
