"""A long run never loses or silently skips data: resume changes, locks, full disks, signals."""

from __future__ import annotations

import errno
import fcntl
import glob
import json
import logging
import os
import pathlib
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys

import grain
import ml_collections
import numpy as np
import pytest
from conftest import (
  ROOT,
  checkpoint_steps,
  communicate_all,
  disk_full_from,
  free_port,
  iter_losses,
  pattern_tokens,
  records,
  run_python,
  sigterm_after,
  start_launch,
  start_python,
  tiny_config,
  truncate_state,
  wait_until_training,
  write_config_file,
)

import launch
from jaxgpt import (
  checkpoint,
  data,
  defaults,
  optim,
  resume,
  run_dir,
  sharding,
  token_files,
  train,
)
from jaxgpt.errors import UserError
from jaxgpt.prep import shards

# Long enough to be stopped from outside, short enough to finish if nobody does.
ENDLESS = {"max_iters": 100000, "eval_interval": 100000, "lr_decay_iters": 100000}


def out_dir_snapshot(out_dir: str) -> dict[str, bytes]:
  """Every file under out_dir and its bytes (the lock file is the live run's, not the data's)."""
  files = sorted(p for p in glob.glob(os.path.join(out_dir, "**"), recursive=True)
                 if os.path.isfile(p) and not p.endswith("run.lock"))
  return {os.path.relpath(p, out_dir): open(p, "rb").read() for p in files}


@pytest.mark.slow
def test_a_resume_whose_state_has_another_structure_is_refused_up_front(tmp_path, token_dir):
  """grad_clip 1.0 -> 0 drops the clipping state: refused naming the key, nothing touched."""
  config_file = write_config_file(tmp_path, token_dir, max_iters=6, eval_interval=3)
  assert run_python("launch.py", f"--config={config_file}").returncode == 0
  out_dir = str(tmp_path / "run")
  before = out_dir_snapshot(out_dir)
  r = run_python("launch.py", f"--config={config_file}", "--config.init_from=resume",
                 "--config.max_iters=9", "--config.grad_clip=0")
  assert r.returncode == 1
  assert "error: cannot resume" in r.stderr and "grad_clip: checkpoint 1.0 vs config 0.0" in r.stderr
  assert "Traceback" not in r.stderr
  assert out_dir_snapshot(out_dir) == before  # no .unreadable, and config.json kept
  # The same change on a key that keeps the structure is allowed and logged.
  ok = run_python("launch.py", f"--config={config_file}", "--config.init_from=resume",
                  "--config.max_iters=9", "--config.grad_clip=0.5")
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert "resume: grad_clip changed from 1.0 to 0.5" in ok.stderr
  with open(os.path.join(out_dir, "config.json")) as f:
    assert json.load(f)["grad_clip"] == 0.5


@pytest.mark.slow
def test_when_no_checkpoint_restores_nothing_is_moved(tmp_path, token_dir):
  config = tiny_config(tmp_path, token_dir, max_iters=6, eval_interval=3)
  train.train(config)
  for step_dir in glob.glob(os.path.join(config.out_dir, "checkpoints", "*")):
    truncate_state(step_dir)
  before = sorted(os.listdir(os.path.join(config.out_dir, "checkpoints")))
  with pytest.raises(UserError, match=r"none of the checkpoints \[3, 6\] could be restored, and "
                                      "none was moved or changed"):
    train.train(tiny_config(tmp_path, token_dir, max_iters=9, init_from="resume"))
  assert sorted(os.listdir(os.path.join(config.out_dir, "checkpoints"))) == before


@pytest.fixture
def fed_batches(monkeypatch):
  """Records the host batches every train step is fed."""
  fed = []
  real = sharding.BatchLayout.train_batch

  def record(layout, local_ABT1):
    fed.append(np.array(local_ABT1))
    return real(layout, local_ABT1)

  monkeypatch.setattr(sharding.BatchLayout, "train_batch", record)
  return fed


def optim_view(config: ml_collections.ConfigDict) -> optim.OptimConfig:
  return defaults.view(optim.OptimConfig, config)


def test_a_resume_whose_schedule_moves_the_learning_rate_says_so(caplog):
  """A larger max_iters on resume stretches a recipe's warmup and decay (they follow it): the
  rate jumps at the resumed iteration, said with the flags that keep the checkpoint's."""
  saved = defaults.recipe("quickstart").copy_and_resolve_references()  # max_iters=250
  longer = defaults.recipe("quickstart")
  longer.update(max_iters=500, grad_clip=0.5)  # grad_clip is no schedule: not named
  with caplog.at_level(logging.WARNING):
    resume.warn_if_lr_moves(optim_view(saved), optim_view(longer), 250)
  assert "resume: the learning rate of iteration 250 is 0.00126 under the changed schedule " \
         "(warmup_iters 25 -> 50, lr_decay_iters 250 -> 500), and 0.0002 under the " \
         "checkpoint's; to keep the checkpoint's: --config.warmup_iters=25 " \
         "--config.lr_decay_iters=250" in caplog.text
  caplog.clear()
  kept = defaults.recipe("quickstart")
  kept.update(max_iters=500, warmup_iters=25, lr_decay_iters=250)  # min_lr from 250 on, as before
  with caplog.at_level(logging.WARNING):
    resume.warn_if_lr_moves(optim_view(saved), optim_view(kept), 250)
  assert not caplog.text


def test_a_resume_that_moves_muon_s_learning_rate_says_so(caplog):
  """Muon's rate has a schedule of its own peak: a change of it alone was logged as info."""
  saved = defaults.recipe("fineweb_40m_modern").copy_and_resolve_references()
  faster = defaults.recipe("fineweb_40m_modern")
  faster.update(muon_learning_rate=2 * saved.muon_learning_rate)
  with caplog.at_level(logging.WARNING):
    resume.warn_if_lr_moves(optim_view(saved), optim_view(faster), 1000)
  rate = float(optim.lr_schedule(optim_view(saved), np, saved.muon_learning_rate)(1000))
  assert (f"resume: Muon's learning rate of iteration 1000 is {2 * rate:.3g} under the changed "
          f"schedule (muon_learning_rate {saved.muon_learning_rate!r} -> "
          f"{faster.muon_learning_rate!r}), and {rate:.3g} under the checkpoint's; to keep the "
          f"checkpoint's: --config.muon_learning_rate={saved.muon_learning_rate}") in caplog.text
  caplog.clear()
  longer = defaults.recipe("fineweb_40m_modern")
  longer.update(max_iters=2 * saved.max_iters)  # both rates move: one line says both
  with caplog.at_level(logging.WARNING):
    resume.warn_if_lr_moves(optim_view(saved), optim_view(longer), saved.max_iters - 10)
  assert caplog.text.count("resume: the learning rate of iteration") == 1
  assert re.search(r"under the checkpoint's \(Muon's learning rate: [\d.e-]+ now, [\d.e-]+ at "
                   r"the checkpoint\)", caplog.text)


def test_a_changed_layout_continues_at_the_window_after_the_tokens_trained_on():
  """A checkpoint's tokens count block_size per window trained on (its targets; a window holds
  one more), so 512 tokens at block_size 16 are 32 windows, and the data goes on at the 33rd."""
  assert resume._reached(512, 16, "the batch layout changed", said=True) == 32


def test_a_saved_data_position_continues_only_under_its_basis():
  now = {"windows_per_iter": 8, "processes": 1, "workers": 2, "devices": 1, "grain": "0.2.18"}
  assert resume._not_continued(now, now) is None
  older = {k: v for k, v in now.items() if k != "grain"}  # saved before the version was recorded
  assert resume._not_continued(older, now) is None  # read, and warned about if it fails
  in_process = {**now, "workers": 0}  # its iterator state reads back under any Grain
  assert resume._not_continued({**in_process, "grain": "0.2.12"}, in_process) is None
  # Not "does not read back (KeyError: 'exhausted')", which reads as damage:
  assert resume._not_continued({**now, "grain": "0.2.12"}, now) == (
      "the data position was saved by grain 0.2.12's worker processes, in that version's own "
      "format, which a run under grain 0.2.18 does not read")
  assert resume._not_continued({**now, "windows_per_iter": 4, "grain": "0.2.12"}, now) == (
      "the batch layout changed (windows_per_iter 4 -> 8)")


def test_a_change_of_accumulation_or_of_workers_alone_moves_the_data_position():
  """A saved iterator counts its batches of accum x batch windows: continued under 1 x 4
  instead of 2 x 4, it would go on at window 4n, not 8n, and train again on windows it had
  trained on. So a change of accumulation alone, at the same batch (or of the worker processes
  the saved state is of), starts at the window the checkpoint reached."""
  mesh = sharding.make_mesh()
  basis = lambda accum, workers: resume.position_basis(
      sharding.BatchLayout(mesh, accum, 4, 16), workers)
  n = 4 * mesh.size
  assert resume._not_continued(basis(2, 0), basis(1, 0)) == (
      f"the batch layout changed (windows_per_iter {2 * n} -> {n})")
  assert resume._not_continued(basis(2, 0), basis(2, 2)) == (
      "the batch layout changed (workers 0 -> 2)")


@pytest.mark.slow
def test_a_resume_under_another_grain_with_workers_continues_at_the_same_token(
    tmp_path, token_dir, fed_batches, caplog, monkeypatch):
  kw = {"eval_interval": 4, "lr_decay_iters": 12, "data_workers": 1}
  train.train(tiny_config(tmp_path, token_dir, max_iters=4, **kw))
  saved_with = grain.__version__
  monkeypatch.setattr(grain, "__version__", "9.9.9")
  fed_batches.clear()
  resumed = tiny_config(tmp_path, token_dir, max_iters=5, init_from="resume", **kw)
  train.train(resumed)
  assert (f"resume: the data position was saved by grain {saved_with}'s worker processes, in that "
          "version's own format, which a run under grain 9.9.9 does not read; the data continues "
          "at window 32 (token 512)"
          ) in caplog.text
  assert "does not read back" not in caplog.text  # nothing was tried and found damaged
  source = data.open_split(token_dir, "train", resumed.block_size, resumed.vocab_size)
  stream = data._windows_stream(source, resumed.seed, 0, 1)
  expected = np.stack([stream[i] for i in range(32, 40)]).reshape(2, 4, -1)
  np.testing.assert_array_equal(fed_batches[0], expected)
  _, meta = checkpoint_meta(resumed, 5)
  assert meta["data"]["grain"] == "9.9.9" and meta["data"]["start_window"] == 32


@pytest.mark.slow
def test_a_resume_with_another_batch_continues_at_the_same_token(tmp_path, token_dir,
                                                                 fed_batches, caplog):
  kw = {"eval_interval": 4, "lr_decay_iters": 12}
  train.train(tiny_config(tmp_path, token_dir, max_iters=4, batch_size=4, **kw))
  fed_batches.clear()
  resumed = tiny_config(tmp_path, token_dir, max_iters=6, batch_size=8, init_from="resume", **kw)
  train.train(resumed)
  assert "resume: the batch layout changed (windows_per_iter 8 -> 16); the data continues at " \
         "window 32 (token 512)" in caplog.text  # what changed, and only that
  # 4 iterations of 2 x 4 windows were read: the resumed run's first batch (2 x 8) is the
  # stream's windows 32..47, not the 64..79 that counting batches of 16 would give.
  source = data.open_split(token_dir, "train", resumed.block_size, resumed.vocab_size)
  stream = data._windows_stream(source, resumed.seed, 0, 1)
  expected = np.stack([stream[i] for i in range(32, 48)]).reshape(2, 8, -1)
  np.testing.assert_array_equal(fed_batches[0], expected)
  tokens = [(r["iter"], r["tokens"]) for r in records(resumed.out_dir, "train")]
  assert tokens == [(i, (i + 1) * 128) for i in range(4)] + [(4, 512 + 256), (5, 512 + 512)]
  _, meta = checkpoint_meta(resumed, 6)
  assert meta["tokens"] == 512 + 2 * 256 and meta["data"]["start_window"] == 32
  # Resumed again with the same batch, the saved iterator state continues it.
  fed_batches.clear()
  train.train(tiny_config(tmp_path, token_dir, max_iters=7, batch_size=8, init_from="resume",
                          **kw))
  expected = np.stack([stream[i] for i in range(64, 80)]).reshape(2, 8, -1)
  np.testing.assert_array_equal(fed_batches[0], expected)


@pytest.mark.slow
def test_an_eval_only_resume_says_only_the_changes_its_evaluation_sees(tmp_path, token_dir,
                                                                       caplog):
  """It logged the batch layout's new data position, batch_size, lr_decay_iters and eval_only
  itself as changes, and the training plan and its warnings, though it trains nothing."""
  train.train(tiny_config(tmp_path, token_dir, max_iters=3))
  caplog.clear()
  caplog.set_level(logging.INFO)
  train.train(tiny_config(tmp_path, token_dir, max_iters=3, init_from="resume", eval_only=True,
                          batch_size=2, lr_decay_iters=100, eval_iters=1))
  assert [m for m in caplog.messages if m.startswith("resume:")] == [
      "resume: eval_iters changed from 2 to 1",
      "resume: eval_iters changed, so the val loss is over other windows than the run's before"]
  # Nor the training plan (tokens per iteration, schedule, epochs, MFU), only the model's size.
  planned = [r.getMessage() for r in caplog.records
             if r.levelno == logging.INFO and r.getMessage().startswith(("plan:", "MFU:"))]
  assert len(planned) == 1 and planned[0].startswith("plan: parameters: "), planned


def checkpoint_meta(config, at_step: int):
  ckpts = run_dir.RunDir(config.out_dir).checkpoints(read_only=True)
  return at_step, ckpts.read_meta(at_step)


@pytest.mark.slow
def test_a_second_run_on_a_live_directory_is_refused_naming_the_holder(tmp_path, token_dir):
  config_file = write_config_file(tmp_path, token_dir, **ENDLESS)
  proc = start_launch(config_file)
  out_dir = str(tmp_path / "run")
  try:
    wait_until_training(out_dir, 120)
    for init_from in ("scratch", "resume"):
      r = run_python("launch.py", f"--config={config_file}", f"--config.init_from={init_from}")
      assert r.returncode == 1
      assert f"is in use by another run (pid {proc.pid} on {socket.gethostname()}" in r.stderr
      assert "Traceback" not in r.stderr
  finally:
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, output
  assert len(checkpoint_steps(out_dir)) == 1


def test_a_refused_start_leaves_no_run_directory_it_made(tmp_path, token_dir):
  config = tiny_config(tmp_path, str(tmp_path / "nope"))
  with pytest.raises(UserError, match="nope"):
    train.train(config)
  assert not os.path.exists(config.out_dir)  # no run.lock, no empty checkpoints/
  os.makedirs(config.out_dir)  # a user's folder: the start takes back what it added
  (tmp_path / "run" / "notes.txt").write_text("mine")
  with pytest.raises(UserError, match="nope"):
    train.train(config)
  assert os.listdir(config.out_dir) == ["notes.txt"]
  os.remove(tmp_path / "run" / "notes.txt")
  train.train(tiny_config(tmp_path, token_dir, max_iters=3))
  with pytest.raises(UserError, match="already holds checkpoints"):
    train.train(tiny_config(tmp_path, token_dir, max_iters=3))
  # nanoGPT's eval_only with its default init_from was told "to continue that run", as if
  # resuming would train it.
  with pytest.raises(UserError, match=r"steps \[3\]\); nothing was changed. To evaluate its "
                                      r"latest checkpoint add --config.init_from=resume;"):
    train.train(tiny_config(tmp_path, token_dir, max_iters=3, eval_only=True))
  assert sorted(os.listdir(config.out_dir)) == ["checkpoints", "config.json", "metrics.jsonl",
                                                "run.lock"]


def test_a_start_in_a_folder_with_another_programs_config_json_is_refused(tmp_path, token_dir):
  """`init_from=gpt2` with out_dir its hf_checkpoint_dir (fine-tuning "in place") would
  replace the checkpoint's config.json: then neither jaxgpt nor transformers could load it."""
  config = tiny_config(tmp_path, token_dir, max_iters=2)
  os.makedirs(config.out_dir)
  hf_config = os.path.join(config.out_dir, "config.json")
  with open(hf_config, "w", encoding="utf-8") as f:
    json.dump({"model_type": "gpt2", "n_layer": 12}, f)
  before = pathlib.Path(hf_config).read_text(encoding="utf-8")
  with pytest.raises(UserError, match=f"{hf_config} is not a jaxgpt run's config"):
    launch.run(config)
  with pytest.raises(UserError, match="not a jaxgpt run's config"):  # the loop's own check
    train.train(config)
  assert sorted(os.listdir(config.out_dir)) == ["config.json"]  # nothing added
  assert pathlib.Path(hf_config).read_text(encoding="utf-8") == before


def test_an_out_dir_that_is_a_dataset_folder_is_refused_before_any_write(tmp_path, token_dir):
  """out_dir=data_dir (a typo) wrote checkpoints/, config.json, metrics.jsonl and run.lock
  among the token files."""
  before = sorted(os.listdir(token_dir))
  config = tiny_config(tmp_path, token_dir, out_dir=token_dir, max_iters=2)
  with pytest.raises(UserError, match=rf"out_dir='{token_dir}' holds token files "
                                      r"\(syn_train_000000.bin, ...\): a run would write"):
    launch.run(config)
  another = tiny_config(tmp_path, str(tmp_path / "python_docs"), dataset="python_docs",
                        out_dir=str(tmp_path / "python_docs"))  # the data would be made there
  with pytest.raises(UserError, match="is the data_dir"):
    launch.run(another)
  assert sorted(os.listdir(token_dir)) == before
  assert not os.path.exists(tmp_path / "python_docs")


def test_an_eval_only_resume_evaluates_a_run_among_token_files(tmp_path, token_dir):
  """It writes nothing there (the check is for what a run writes), so a run directory that
  came to hold token files (a run from before the check) is still evaluated; a resume that
  trains is refused."""
  config = tiny_config(tmp_path, token_dir, max_iters=2, eval_interval=2)
  train.train(config)
  shutil.copy(os.path.join(token_dir, "syn_train_000000.bin"), config.out_dir)
  before = sorted(os.listdir(config.out_dir))
  resumed = tiny_config(tmp_path, token_dir, max_iters=4, eval_interval=2, init_from="resume")
  with pytest.raises(UserError, match="holds token files"):
    launch.run(resumed)
  resumed.eval_only = True
  assert set(launch.run(resumed)) == {"train", "val"}
  assert sorted(os.listdir(config.out_dir)) == before


def test_a_checkpoints_folder_the_run_cannot_save_in_is_refused_at_the_start(tmp_path, token_dir,
                                                                            monkeypatch):
  """Found at the first save, it cost an eval_interval (2000 iterations by default)."""
  config = tiny_config(tmp_path, token_dir, max_iters=2)
  os.makedirs(config.out_dir)
  checkpoints = os.path.join(config.out_dir, "checkpoints")
  pathlib.Path(checkpoints).write_text("mine")
  with pytest.raises(UserError, match=f"{checkpoints}: the run cannot save its checkpoints "
                                      r"there \(not a folder\); nothing was changed"):
    launch.run(config)
  assert pathlib.Path(checkpoints).read_text() == "mine"
  os.remove(checkpoints)
  os.makedirs(checkpoints)
  real_access = os.access
  monkeypatch.setattr(os, "access", lambda path, mode: (  # a read-only mount, even for root
      False if path == checkpoints else real_access(path, mode)))
  with pytest.raises(UserError, match=r"the run cannot save its checkpoints there \(not "
                                      r"writable\)"):
    train.train(config)
  train.train(tiny_config(tmp_path, token_dir, eval_only=True))  # which saves nothing
  assert records(config.out_dir, "eval")[0]["iter"] == 0


def test_a_stop_in_an_eval_only_runs_tasks_ends_it_with_the_evaluation_skipped(tmp_path,
                                                                                token_dir, caplog):
  """eval_only has nothing to save: a SIGTERM while its tasks score ends it after them, said
  as such (it said "stopping before the first step" and then evaluated on to its end)."""
  def tasks(params):
    os.kill(os.getpid(), signal.SIGTERM)
    return {"t/acc": 0.5}, ["t: 0.5"]

  config = tiny_config(tmp_path, token_dir, eval_only=True)
  with caplog.at_level(logging.INFO):
    train.train(config, hooks=train.Hooks(tasks=tasks))
  assert ("received SIGTERM: eval_only saves nothing, so the run ends once the start-up or "
          "evaluation under way is done") in caplog.messages
  assert records(config.out_dir, "tasks") and not records(config.out_dir, "eval")


def test_small_shards_whose_tails_fall_in_no_window_are_warned_of(tmp_path, caplog):
  """A window never spans two files: shards of 24 tokens at block_size=16 leave 7 of each 24
  unread (a window reads 17), which the run says at its start (it said nothing)."""
  d = tmp_path / "data"
  d.mkdir()
  for i in range(20):
    shards.write_shard(str(d / f"syn_train_{i:06d}.bin"), pattern_tokens(24, seed=i))
  shards.write_shard(str(d / "syn_val_000000.bin"), pattern_tokens(1000, seed=99))
  with caplog.at_level(logging.INFO):
    train.train(tiny_config(tmp_path, str(d), max_iters=0))
  warned = [m for m in caplog.messages if "of its tokens are in no window" in m]
  assert warned == [
      ("train: 29% of its tokens are in no window (a window never spans two files: each file's "
      "tokens past its last whole window, and a file shorter than one, are left out); make the "
      "data in larger shards (prepare's --shard_tokens)")]


def test_the_tail_of_a_split_of_one_file_is_not_blamed_on_small_shards(tmp_path, token_dir,
                                                                       caplog):
  """A small corpus's val split in one file of 45 tokens leaves 12 past its last window, which
  larger shards cannot take in: the run said "make the data in larger shards" of it."""
  shards.write_shard(os.path.join(token_dir, "syn_val_000000.bin"), pattern_tokens(45, seed=3))
  with caplog.at_level(logging.INFO):
    train.train(tiny_config(tmp_path, token_dir, max_iters=0))
  assert not [m for m in caplog.messages if "of its tokens are in no window" in m]


def test_a_filesystem_without_locks_runs_unguarded_with_a_warning(tmp_path, monkeypatch, caplog):
  def no_locks(fd, operation):  # Lustre mounted without -o flock
    raise OSError(38, "Function not implemented")

  monkeypatch.setattr(run_dir.fcntl, "flock", no_locks)
  rundir = run_dir.RunDir(str(tmp_path / "run"))
  with rundir.lock():
    assert os.path.isfile(os.path.join(rundir.out_dir, "run.lock"))
  assert "run.lock: cannot be locked (Function not implemented)" in caplog.text
  assert not os.path.exists(rundir.out_dir)  # a start that wrote nothing leaves nothing


def test_evaluations_share_a_run_directory_and_go_on_beside_its_training(tmp_path, caplog):
  """eval_only on a resume writes nothing: several at once, or one beside the training run,
  as nanoGPT's eval_only; a training run is refused while one evaluates."""
  rundir = run_dir.RunDir(str(tmp_path / "run"))
  refused = r"in use by another run \(an evaluation of its checkpoint, eval_only\)"
  with (rundir.lock(writes=False), rundir.lock(writes=False),
        pytest.raises(UserError, match=refused), rundir.lock()):
    pass
  with rundir.lock(), caplog.at_level("WARNING", logger="absl"), rundir.lock(writes=False):
    pass
  assert (f"in use by a training run (pid {os.getpid()} on {socket.gethostname()}, started "
          in caplog.text)


@pytest.mark.parametrize("slow", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_a_run_that_writes_nothing_locks_a_directory_it_can_only_read(tmp_path, token_dir,
                                                                       monkeypatch, caplog, slow):
  """eval_only on a resume of an archived run (a read-only mount, even for root): its
  run.lock opens for reading, which a shared flock needs no more than (two evaluations go
  together; a run that writes is refused); without a run.lock, it goes unlocked."""
  rundir = run_dir.RunDir(str(tmp_path / "run"))
  os.makedirs(rundir.out_dir)
  lock_file = os.path.join(rundir.out_dir, "run.lock")
  pathlib.Path(lock_file).write_text("")
  real_open = os.open

  def read_only(path, flags, *mode):
    if flags & os.O_RDWR and path == lock_file:
      raise OSError(30, "Read-only file system")
    return real_open(path, flags, *mode)

  monkeypatch.setattr(run_dir.os, "open", read_only)
  with (pytest.raises(UserError, match=r"/run: a run cannot write there \(Read-only file "),
        rundir.lock()):
    pass
  with rundir.lock(writes=False):
    with rundir.lock(writes=False):
      pass
    monkeypatch.setattr(run_dir.os, "open", real_open)
    with (pytest.raises(UserError, match=r"is in use by another run \(an evaluation of its "
                                         r"checkpoint, eval_only\)"), rundir.lock()):
      pass
  assert pathlib.Path(lock_file).read_text() == ""
  os.remove(lock_file)
  monkeypatch.setattr(run_dir.os, "open", read_only)
  with caplog.at_level("WARNING", logger="absl"), rundir.lock(writes=False):
    assert "run: cannot be locked (Read-only file system, and no run.lock to read)" in caplog.text
  if slow:
    monkeypatch.setattr(run_dir.os, "open", real_open)
    pathlib.Path(lock_file).write_text("")
    config = tiny_config(tmp_path, token_dir, max_iters=2, eval_interval=2)
    train.train(config)
    monkeypatch.setattr(run_dir.os, "open", read_only)
    losses = train.train(tiny_config(tmp_path, token_dir, max_iters=2, eval_interval=2,
                                     eval_only=True, init_from="resume"))
    assert losses["val"] == records(config.out_dir, "eval")[-1]["val_loss"]


@pytest.mark.slow
def test_a_lock_left_by_a_dead_run_is_taken_over_with_a_warning(tmp_path, token_dir, caplog):
  config = tiny_config(tmp_path, token_dir, max_iters=2, eval_interval=2)
  os.makedirs(config.out_dir)
  with open(os.path.join(config.out_dir, "run.lock"), "w") as f:
    f.write("pid 4194301 on elsewhere, started 2026-01-01 00:00:00")
  train.train(config)
  assert "taking over the lock left by a run that is no longer running (pid 4194301" in caplog.text
  with open(os.path.join(config.out_dir, "run.lock")) as f:
    assert f.read() == ""  # released


@pytest.mark.slow
def test_a_failed_save_stops_the_run_at_once_and_removes_it(tmp_path, token_dir):
  """A write error (a file-size limit standing in for a full disk) in a background save."""
  # A 256 KiB embedding: Orbax's data files hold arrays whole, so every save writes a file past
  # the limit, however its writes are grouped into files (with the tiny model's arrays, all
  # under 64 KiB, a save written as many small files got through under load).
  config_file = write_config_file(tmp_path, token_dir, max_iters=400, eval_interval=100,
                                  lr_decay_iters=400, vocab_size=2048)

  # bash hands on the limit and the ignored SIGXFSZ: a write past 64 KiB fails, not kills.
  command = (f"trap '' XFSZ; ulimit -f 64; exec {sys.executable} launch.py "
             f"--config={config_file}")
  proc = subprocess.Popen(["bash", "-c", command], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True,
                          env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONDONTWRITEBYTECODE="1"))
  output, _ = proc.communicate(timeout=300)
  assert proc.returncode == 1, output[-3000:]
  errors = [line for line in output.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1, output[-3000:]
  assert "Traceback" not in output and "Event loop is closed" not in output  # Orbax's leftovers
  last_line = errors[0]
  assert last_line.startswith("error: saving the checkpoint of step 100 failed: File too large "
                              "[errno 27]. ")
  assert "GiB are free on its filesystem" in last_line and "no checkpoint was saved" in last_line
  assert last_line.endswith("run the same command again: it starts over.")  # not a resume
  out_dir = str(tmp_path / "run")
  assert records(out_dir, "train")[-1]["iter"] < 199  # stopped before the next save was due
  assert os.listdir(os.path.join(out_dir, "checkpoints")) == []  # the partial save is gone


def test_a_checkpoint_folder_that_cannot_be_made_stops_the_run_at_once(tmp_path, token_dir,
                                                                       monkeypatch):
  """No permission, or no inodes left: one line as the save starts (Orbax, making the folders
  in the background, kept the run waiting 300 s for them and ended in a traceback)."""
  def refusing(make):
    def refuse_save_folders(path, *args, **kwargs):
      if "orbax-checkpoint-tmp" in str(path):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))
      return make(path, *args, **kwargs)
    return refuse_save_folders

  monkeypatch.setattr(os, "mkdir", refusing(os.mkdir))
  monkeypatch.setattr(os, "makedirs", refusing(os.makedirs))
  with pytest.raises(checkpoint.SaveError, match=r"^saving the checkpoint of step 3 failed: "
                                                 r"Permission denied \[errno 13\]"):
    train.train(tiny_config(tmp_path, token_dir, max_iters=3, eval_interval=3))


@pytest.mark.slow
def test_a_full_disk_at_the_start_is_one_line_and_leaves_nothing(tmp_path, token_dir):
  """The run's first files (config.json, metrics.jsonl) cannot be written: a file-size limit
  of 0 stands in for a full disk. The out_dir the start made is removed again."""
  config_file = write_config_file(tmp_path, token_dir)
  command = (f"trap '' XFSZ; ulimit -f 0; exec {sys.executable} launch.py "
             f"--config={config_file}")
  proc = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True,
                        check=False, timeout=300,
                        env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONDONTWRITEBYTECODE="1"))
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  assert proc.stderr.splitlines()[-1] == (
      f"error: {tmp_path / 'run'}: writing the run's files failed (File too large [errno 27]); "
      "nothing was trained. Fix the cause and run the same command again")  # not a full disk
  assert not (tmp_path / "run").exists()


def test_a_run_file_that_cannot_be_written_is_named(tmp_path, token_dir):
  """config.json is a directory: the one-line error names it, and nothing is trained."""
  (tmp_path / "run" / "config.json").mkdir(parents=True)
  with pytest.raises(checkpoint.SaveError, match=r"writing the run's files failed "
                                                 r"\(config\.json: Is a directory \[errno 21\]\)"):
    train.train(tiny_config(tmp_path, token_dir, max_iters=3))
  assert not (tmp_path / "run" / "metrics.jsonl").exists()
  assert (tmp_path / "run" / "config.json").is_dir()


def test_a_failed_save_names_the_last_good_checkpoint(tmp_path, token_dir):
  """...and removes the partial save, in an out_dir whose name is a glob pattern too."""
  config = tiny_config(tmp_path, token_dir, out_dir=str(tmp_path / "run[lr=3e-4]"), max_iters=3,
                       eval_interval=3)
  train.train(config)
  ckpts = run_dir.RunDir(config.out_dir).checkpoints()
  partial = os.path.join(ckpts.directory, "6.orbax-checkpoint-tmp-1234")
  os.makedirs(os.path.join(partial, "state"))
  error = ckpts._save_failed(6, OSError(28, "No space left on device"))
  assert isinstance(error, checkpoint.SaveError)
  assert str(error).startswith("saving the checkpoint of step 6 failed: No space left on device "
                               "[errno 28]. ")
  assert f"the last good checkpoint is step 3 in {ckpts.directory}, and " in str(error)
  assert str(error).endswith("add --config.init_from=resume to continue.")
  assert not os.path.exists(partial)


def test_a_failed_write_under_auto_resume_says_to_run_the_same_command(tmp_path, token_dir,
                                                                      monkeypatch):
  """...as its stops say: it said to add --config.init_from=resume."""
  config = tiny_config(tmp_path, token_dir, max_iters=6, eval_interval=3, auto_resume=True)
  disk_full_from(monkeypatch, 4)
  with pytest.raises(checkpoint.SaveError, match="the last good checkpoint is step 3") as e:
    train.train(config)
  assert str(e.value).endswith("run the same command again to continue.")


def test_auto_resume_reruns_the_same_command_as_a_run_never_stopped(tmp_path, token_dir,
                                                                   monkeypatch, caplog):
  """A scheduler reruns a preempted job's command as it was (SLURM's --requeue): with
  auto_resume it starts the run where out_dir has no checkpoint, and resumes it where the stop
  left one, with the losses of a run never stopped (init_from=scratch alone is refused there)."""
  kw = {"max_iters": 8, "eval_interval": 4, "lr_decay_iters": 8}
  unbroken = tiny_config(tmp_path / "unbroken", token_dir, **kw)
  launch.run(unbroken)
  config = tiny_config(tmp_path, token_dir, auto_resume=True, **kw)
  with monkeypatch.context() as stopped, caplog.at_level(logging.INFO):
    sigterm_after(stopped, 5)
    launch.run(config)
  assert records(config.out_dir, "train")[-1]["iter"] < 7
  said = "checkpoint saved. Continue with the same command"
  assert any(m.endswith(said) for m in caplog.messages)  # init_from=resume is not needed
  caplog.clear()
  with caplog.at_level(logging.INFO):
    launch.run(config)
  assert f"auto_resume: {config.out_dir}/checkpoints holds checkpoints" in caplog.text
  losses = iter_losses(config.out_dir)
  assert losses == iter_losses(unbroken.out_dir) and len(losses) == 8


@pytest.mark.slow
def test_sigterm_just_before_an_evaluation_saves_once_and_finishes(tmp_path, token_dir,
                                                                    monkeypatch):
  sigterm_after(monkeypatch, 3)  # it lands after iteration 3, before the evaluation at 4
  config = tiny_config(tmp_path, token_dir, max_iters=8, eval_interval=4, lr_decay_iters=8)
  train.train(config)
  assert checkpoint_steps(config.out_dir) == [4]
  assert [r["iter"] for r in records(config.out_dir, "train")] == [0, 1, 2, 3]


@pytest.mark.slow
def test_sigterm_during_an_evaluation_saves_that_iteration_alone(tmp_path, token_dir,
                                                                 monkeypatch):
  """The run trained one step more and saved twice (two writes in a scheduler's grace period);
  a checkpoint its evaluation had not saved (no new best) is saved with that val loss, so a
  resume does not evaluate it again. At iteration 0 nothing is trained: a step is, and saved."""
  real_eval = train._Loop.eval_and_save
  at = []

  def sigterm_then_eval(run, it):
    if it == at[0]:  # the signal lands in the evaluation, no step running or queued
      os.kill(os.getpid(), signal.SIGTERM)
    real_eval(run, it)

  monkeypatch.setattr(train._Loop, "eval_and_save", sigterm_then_eval)
  # At a rate of 0 no val loss is a new best: without always_save_checkpoint, none is saved.
  kw = {"max_iters": 8, "eval_interval": 4, "lr_decay_iters": 8, "learning_rate": 0.0,
        "min_lr": 0.0, "always_save_checkpoint": False}
  at.append(4)
  config = tiny_config(tmp_path / "mid", token_dir, **kw)
  train.train(config)
  assert checkpoint_steps(config.out_dir) == [4]
  assert [r["iter"] for r in records(config.out_dir, "train")] == [0, 1, 2, 3]
  evals = records(config.out_dir, "eval")
  assert [r["iter"] for r in evals] == [0, 4]
  assert checkpoint_meta(config, 4)[1]["val_loss"] == evals[-1]["val_loss"]
  train.train(tiny_config(tmp_path / "mid", token_dir, init_from="resume", **kw))
  assert [r["iter"] for r in records(config.out_dir, "eval")] == [0, 4, 8]  # 4 once
  at[0] = 0
  config = tiny_config(tmp_path / "first", token_dir, **kw)
  train.train(config)
  assert checkpoint_steps(config.out_dir) == [1]


# launch.py, held once the plan is logged (before the step is compiled) until the test has sent
# SIGTERM: a test scheduled late would find the run past its first step, with a step to save.
HOLD_FOR_THE_SIGNAL = """
import os, runpy, sys, time
from jaxgpt import train
real_log_start = train._log_start

def log_start(*args):
  logged = real_log_start(*args)
  print("held for the signal", flush=True)
  while not os.path.exists(os.environ["SIGNALLED"]):
    time.sleep(0.01)
  return logged

train._log_start = log_start
sys.argv[0] = "launch.py"
runpy.run_path("launch.py", run_name="__main__")
"""


@pytest.mark.slow
def test_sigterm_during_start_up_ends_the_run_with_one_line(tmp_path, token_dir):
  signalled = tmp_path / "signalled"
  proc = start_python("-c", HOLD_FOR_THE_SIGNAL,
                      f"--config={write_config_file(tmp_path, token_dir, **ENDLESS)}",
                      env={"SIGNALLED": str(signalled)})
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if "held for the signal" in line:
      try:
        proc.send_signal(signal.SIGTERM)
      finally:
        signalled.touch()  # never a run left waiting
      break
  output = "".join(lines) + proc.communicate(timeout=120)[0]
  assert proc.returncode == 0, output
  assert ("stopped by SIGTERM before the first step: nothing to save, and the run directory as "
          "it was") in output
  assert "received SIGTERM: stopping before the first step, once the start-up work" in output
  assert "then saving" not in output  # there is nothing to save
  assert "Next:" not in output  # no end-of-run hint to report a run that never was
  assert not (tmp_path / "run").exists()  # no config.json nor metrics.jsonl a rerun moves aside


@pytest.mark.slow
def test_a_cut_off_metrics_line_is_set_aside_on_resume(tmp_path, token_dir, caplog):
  train.train(tiny_config(tmp_path, token_dir, max_iters=4, eval_interval=4, lr_decay_iters=8))
  metrics = run_dir.RunDir(str(tmp_path / "run")).metrics_path
  with open(metrics, "a") as f:
    f.write('{"event": "train", "iter": 4, "lo')  # power lost mid-write
  config = tiny_config(tmp_path, token_dir, max_iters=6, eval_interval=4, lr_decay_iters=8,
                       init_from="resume")
  train.train(config)
  assert "not a whole record" in caplog.text
  assert [r["iter"] for r in records(config.out_dir, "train")] == list(range(6))
  with open(metrics + ".superseded") as f:
    assert '"lo' in f.read()


def test_a_record_cut_just_before_its_newline_is_set_aside_on_resume(tmp_path):
  rundir = run_dir.RunDir(str(tmp_path / "run"))
  os.makedirs(rundir.out_dir)
  whole = '{"event": "eval", "iter": 4, "val_loss": 1.0}\n'
  cut = '{"event": "train", "iter": 4, "loss": 0.9}'  # whole JSON, its newline never written
  with open(rundir.metrics_path, "w") as f:
    f.write(whole + cut)
  rundir.keep_metrics_until(4, evaluated=True)
  with open(rundir.metrics_path, "a") as f:  # the resumed run's first record
    f.write('{"event": "train", "iter": 4, "loss": 0.8}\n')
  assert [r["loss"] for r in rundir.read_metrics()["train"]] == [0.8]
  with open(rundir.metrics_path + ".superseded") as f:
    assert f.read() == cut + "\n"


def test_a_resume_counts_the_redone_records_it_moves_apart_from_cut_lines(tmp_path, caplog):
  """A cut-off line is warned of on its own; it was counted again as a redone iteration's."""
  rundir = run_dir.RunDir(str(tmp_path / "run"))
  os.makedirs(rundir.out_dir)
  with open(rundir.metrics_path, "w") as f:
    f.write('{"event": "train", "iter": 4, "loss": 0.9}\n{"event": "train", "iter": 5, "loss": '
            '0.8}\n{"event": "eval", "iter": 6, "val_loss": 1.0}\n{"event": "train", "iter": 6')
  with caplog.at_level(logging.INFO):
    rundir.keep_metrics_until(5, evaluated=True)
  assert caplog.text.count("not a whole record") == 1
  assert "2 records of redone iterations moved" in caplog.text
  caplog.clear()
  with open(rundir.metrics_path, "a") as f:
    f.write('{"event": "train", "iter": 4')
  with caplog.at_level(logging.INFO):
    rundir.keep_metrics_until(5, evaluated=True)
  assert "not a whole record" in caplog.text and "redone" not in caplog.text


def test_lines_that_are_no_records_are_set_aside_on_resume_byte_for_byte(tmp_path):
  """A note added by hand, a JSON list, bytes that are not UTF-8: moved aside, not a traceback
  after the resume was accepted."""
  rundir = run_dir.RunDir(str(tmp_path / "run"))
  os.makedirs(rundir.out_dir)
  whole = b'{"event": "eval", "iter": 4, "val_loss": 1.0}\n'
  foreign = [b'{"note": "lr looked high"}\n', b"[1, 2]\n", b"\xff\xfe latin\n"]
  with open(rundir.metrics_path, "wb") as f:
    f.write(whole + b"".join(foreign))
  rundir.keep_metrics_until(4, evaluated=True)
  with open(rundir.metrics_path, "rb") as f:
    assert f.read() == whole
  with open(rundir.metrics_path + ".superseded", "rb") as f:
    assert f.read() == b"".join(foreign)


def test_a_wandb_run_id_or_config_cut_short_by_a_full_disk_keeps_the_one_before(tmp_path):
  """Cut short, wandb_run_id would start another W&B run at the next resume."""
  rundir = run_dir.RunDir(str(tmp_path))
  rundir.write_wandb_run_id("run1")
  rundir.write_config(ml_collections.ConfigDict({"init_from": "scratch"}))
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  resource.setrlimit(resource.RLIMIT_FSIZE, (0, hard))  # every write fails, as on a full disk
  try:
    with pytest.raises(OSError):
      rundir.write_wandb_run_id("run2")
    with pytest.raises(OSError):
      rundir.write_config(ml_collections.ConfigDict({"init_from": "resume"}))
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
  assert rundir.read_wandb_run_id() == "run1"
  assert rundir.read_config() == {"init_from": "scratch"}
  assert sorted(os.listdir(tmp_path)) == ["config.json", "wandb_run_id"]  # no temporary file


def test_an_unreadable_wandb_run_id_is_one_error_naming_it(tmp_path):
  rundir = run_dir.RunDir(str(tmp_path))
  (tmp_path / "wandb_run_id").mkdir()
  with pytest.raises(UserError, match=r"wandb_run_id: cannot read it \(Is a directory\); move "
                                      "it aside"):
    rundir.read_wandb_run_id()
  (tmp_path / "wandb_run_id").rmdir()
  (tmp_path / "wandb_run_id").write_bytes(b"\xff\xfe\n")
  with pytest.raises(UserError, match=r"wandb_run_id: cannot read it \('utf-8' codec"):
    rundir.read_wandb_run_id()


def test_a_damaged_config_json_is_one_error_naming_it(tmp_path):
  rundir = run_dir.RunDir(str(tmp_path))
  (tmp_path / "config.json").write_text('{"n_layer": ')
  with pytest.raises(UserError, match=r"config.json: not JSON \(Expecting value"):
    rundir.read_config()


@pytest.mark.slow
def test_a_new_run_moves_the_metrics_of_one_that_never_checkpointed(tmp_path, token_dir):
  config = tiny_config(tmp_path, token_dir, max_iters=2, eval_interval=2)
  os.makedirs(config.out_dir)
  old = '{"event": "train", "iter": 0, "loss": 9.0}\n'
  with open(os.path.join(config.out_dir, "metrics.jsonl"), "w") as f:
    f.write(old)
  with open(os.path.join(config.out_dir, "config.json"), "w") as f:
    f.write('{"init_from": "scratch", "learning_rate": 0.02}')  # the records' config
  train.train(config)
  with open(os.path.join(config.out_dir, "metrics.jsonl.1")) as f:
    assert f.read() == old
  with open(os.path.join(config.out_dir, "config.json.1")) as f:
    assert f.read() == '{"init_from": "scratch", "learning_rate": 0.02}'
  assert run_dir.RunDir(config.out_dir).read_config()["max_iters"] == 2
  assert records(config.out_dir, "eval")[0]["iter"] == 0
  assert len(records(config.out_dir, "train")) == 2


def test_files_of_a_run_stopped_before_its_first_record_are_not_called_records(tmp_path,
                                                                               caplog):
  """A run killed before its first log leaves config.json and an empty metrics.jsonl: the next
  start moved them aside as "the records of an earlier run"."""
  rundir = run_dir.RunDir(str(tmp_path))
  (tmp_path / "config.json").write_text('{"max_iters": 2}')
  (tmp_path / "metrics.jsonl").write_text("")
  rundir.set_aside_metrics()
  assert sorted(os.listdir(tmp_path)) == ["config.json.1", "metrics.jsonl.1"]  # kept all the same
  assert "held the files of an earlier run that stopped before its first record; moved to " \
         "metrics.jsonl.1, config.json.1" in caplog.text and "records of" not in caplog.text
  caplog.clear()
  (tmp_path / "metrics.jsonl").write_text('{"event": "train", "iter": 0, "loss": 9.0}\n')
  rundir.set_aside_metrics()
  assert "held the records of an earlier run without checkpoints; moved to metrics.jsonl.2" \
         in caplog.text


def test_a_header_with_another_magic_is_refused_naming_both(tmp_path):
  tokens = pattern_tokens(600)
  header = np.zeros(256, "<i4")
  header[:3] = (20240801, 1, tokens.size)  # an llm.c-shaped header, another format's magic
  path = tmp_path / "x_train_000000.bin"
  path.write_bytes(header.tobytes() + tokens.astype("<u2").tobytes())
  with pytest.raises(token_files.ShardError, match="magic 20240801.*not llm.c's 20240520"):
    token_files.read_tokens(str(path))
  tokens.tofile(tmp_path / "train.bin")  # a genuine headerless nanoGPT file still reads
  np.testing.assert_array_equal(token_files.read_tokens(str(tmp_path / "train.bin")), tokens)


# Two processes whose first stop_at is at iteration 5,000 (a resumed run), after process 0 got
# a SIGTERM during start-up; each prints where it stops.
STOP_BEFORE_THE_LOOP = """
import os, signal, sys, time
from jax._src import distributed
from jaxgpt import preemption, sharding
process_id = int(sys.argv[1])
sharding.maybe_initialize_distributed(sys.argv[2], 2, process_id)
if process_id == 0:
  os.kill(os.getpid(), signal.SIGTERM)  # JAX's preemption service takes it
# The notice has reached every process once each has put its step counter in the service's
# store: each holds its sync manager's lock from then until the sync point is agreed.
def counters():  # the key is jaxlib's own: where a release renames it, the wait runs out
  try:
    return distributed.global_state.client.key_value_dir_get("PREEMPTION_CURRENT_COUNTER/")
  except Exception:
    return []
deadline = time.monotonic() + 60  # on a loaded machine; ends once both are there
while len(counters()) < 2 and time.monotonic() < deadline:
  time.sleep(0.01)
with preemption.StopSignals(2) as signals:
  print("stops at", next((it for it in range(5000, 5010) if signals.stop_at(it)), None))
"""


@pytest.mark.slow
def test_a_stop_before_a_resumed_multi_process_loop_stops_it_at_once():
  """JAX's sync point counts from 0: handed the iteration (5,000), the loop never stopped."""
  address = f"localhost:{free_port()}"
  procs = [start_python("-c", STOP_BEFORE_THE_LOOP, str(i), address) for i in range(2)]
  try:
    outputs = [out for out, _ in communicate_all(procs, 120)]
  finally:
    for p in procs:
      p.kill()
  assert [p.returncode for p in procs] == [0, 0], outputs
  assert ["stops at 5000" in output for output in outputs] == [True, True], outputs


@pytest.mark.slow
def test_processes_stop_together_at_one_step_when_one_is_signalled(tmp_path, token_dir):
  """A SLURM preemption reaches one process first: every process saves the same step."""
  address = f"localhost:{free_port()}"
  out = str(tmp_path / "multi")
  overrides = json.dumps(dict(batch_size=4, **ENDLESS))
  procs = [start_python("tests/sharded_run.py", f"--out={out}", f"--data={token_dir}",
                        f"--process_id={i}", "--num_processes=2", f"--coordinator={address}",
                        f"--overrides={overrides}") for i in range(2)]
  try:
    wait_until_training(os.path.join(out, "run"), 300)
    procs[1].send_signal(signal.SIGTERM)
    outputs = [out for out, _ in communicate_all(procs, 300)]
  finally:
    for p in procs:
      p.kill()
  assert [p.returncode for p in procs] == [0, 0], outputs
  steps = checkpoint_steps(os.path.join(out, "run"))
  assert len(steps) == 1
  for output in outputs:
    assert f"stopped by a preemption notice (SIGTERM to one of the processes) at iter {steps[0]}" \
        in output



@pytest.mark.parametrize("init_from", ["resume", "scratch"])
def test_the_run_directory_is_checked_before_the_data_is_made(tmp_path, token_dir, monkeypatch,
                                                              init_from):
  """A resume from no checkpoint, or a new run over one, is refused before FineWeb's download
  (hours) or any other start-up work."""
  import launch
  from jaxgpt.prep import fineweb

  if init_from == "scratch":
    launch.run(tiny_config(tmp_path, token_dir, max_iters=3, eval_interval=3))
    rundir = run_dir.RunDir(str(tmp_path / "run"))
    os.mkdir(os.path.join(rundir.checkpoints_dir, "6.orbax-checkpoint-tmp-1"))  # a killed save
    assert checkpoint.finished_steps(rundir.checkpoints_dir) == rundir.checkpoints(
        read_only=True).steps() == [3]  # the early check lists what the run's manager does
  monkeypatch.setattr(fineweb, "prepare_fineweb",
                      lambda *a, **k: pytest.fail("FineWeb was downloaded"))
  config = tiny_config(tmp_path, str(tmp_path / "fineweb"), dataset="fineweb",
                       auto_prepare=True, init_from=init_from)
  expected = "no checkpoints to resume from" if init_from == "resume" else "already holds"
  with pytest.raises(UserError, match=expected):
    launch.run(config)
  assert not (tmp_path / "fineweb").exists()
  assert os.path.isdir(tmp_path / "run") == (init_from == "scratch")


def test_a_run_that_ends_leaves_its_lock_naming_no_holder(tmp_path):
  """The lock names this process while held, and nothing once released, so the next run does
  not warn of a dead one."""
  rundir = run_dir.RunDir(str(tmp_path / "run"))
  os.makedirs(rundir.out_dir)
  lock_file = os.path.join(rundir.out_dir, "run.lock")
  with rundir.lock(), open(lock_file) as f:
    assert f.read().startswith(f"pid {os.getpid()} on ")
    rundir.write_config(ml_collections.ConfigDict({"init_from": "scratch"}))  # the run's files
  with open(lock_file) as f:
    assert f.read() == ""


def test_a_run_lock_removed_between_its_open_and_its_lock_is_opened_again(tmp_path,
                                                                         monkeypatch):
  """A refused start takes back the run.lock it added while it holds it; a run that opened the
  file just before would lock a removed file, beside which a third run could lock a new one."""
  rundir = run_dir.RunDir(str(tmp_path / "run"))
  real_flock = fcntl.flock

  def flock_after_its_removal(fd, operation):
    monkeypatch.setattr(run_dir.fcntl, "flock", real_flock)
    os.remove(os.path.join(rundir.out_dir, "run.lock"))
    return real_flock(fd, operation)

  monkeypatch.setattr(run_dir.fcntl, "flock", flock_after_its_removal)
  with (rundir.lock(), pytest.raises(UserError, match="is in use by another run \\(pid "),
        rundir.lock()):
    pass


def test_a_run_lock_of_the_users_own_is_refused_and_kept(tmp_path, token_dir):
  """A run.lock that no jaxgpt run wrote (the file, or a symlink's target) would be emptied."""
  config = tiny_config(tmp_path, token_dir, max_iters=2)
  lock_file = pathlib.Path(config.out_dir) / "run.lock"
  lock_file.parent.mkdir()
  lock_file.write_text("my notes\n")
  with pytest.raises(UserError, match=re.escape(
      f"{lock_file}: not a jaxgpt run's lock (it reads 'my notes'), and a run would empty it")):
    train.train(config)
  assert lock_file.read_text() == "my notes\n"
  lock_file.unlink()
  (tmp_path / "elsewhere").write_text("kept\n")
  lock_file.symlink_to(tmp_path / "elsewhere")
  with pytest.raises(UserError, match=f"{lock_file}: a run cannot write there \\(a symlink\\)"):
    train.train(config)
  assert (tmp_path / "elsewhere").read_text() == "kept\n"
  lock_file.unlink()
  lock_file.mkdir()
  with pytest.raises(UserError, match=f"{lock_file}: a run cannot write there \\(Is a dir"):
    train.train(config)


def test_a_checkpoints_folder_that_cannot_be_listed_is_refused_by_name(tmp_path, monkeypatch):
  """Another user's run (its out_dir or checkpoints/ closed to others): it read as holding no
  checkpoints ("start with init_from=scratch"), or ended in a PermissionError's traceback."""
  rundir = run_dir.RunDir(str(tmp_path / "run"))
  saved = rundir.checkpoints()
  saved.save(1, {"w": np.ones(2, np.float32)}, None, {"iter": 1})
  saved.wait()
  saved.close()
  real_listdir = os.listdir

  def closed(path: str = ".") -> list[str]:
    if os.path.abspath(path) == os.path.abspath(rundir.checkpoints_dir):
      raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
    return real_listdir(path)

  monkeypatch.setattr(os, "listdir", closed)
  said = re.escape(f"{os.path.abspath(rundir.checkpoints_dir)}: cannot list its checkpoints "
                   "(Permission denied)")
  for reads in (rundir.finished_steps, lambda: rundir.check_start(resume=True, saves=False),
                lambda: rundir.checkpoints(read_only=True)):
    with pytest.raises(UserError, match=said):
      reads()


def test_metrics_in_a_run_directory_that_cannot_be_read_are_not_said_missing(tmp_path,
                                                                            monkeypatch):
  """Another user's out_dir closed to others (mode 700): no file in it can be looked at, and
  report said "no such metrics file (is the directory a run's out_dir?)"."""
  rundir = run_dir.RunDir(str(tmp_path / "run"))
  os.makedirs(rundir.out_dir)
  pathlib.Path(rundir.metrics_path).write_text('{"event": "train", "iter": 0}\n')
  real_stat, real_open = os.stat, open

  def closed(real):
    def call(path, *args, **kwargs):
      if str(path).startswith(rundir.out_dir + os.sep):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
      return real(path, *args, **kwargs)
    return call

  monkeypatch.setattr(os, "stat", closed(real_stat))
  monkeypatch.setattr("builtins.open", closed(real_open))
  with pytest.raises(UserError, match=re.escape(f"{rundir.metrics_path}: cannot read it "
                                                "(Permission denied)")):
    rundir.read_metrics()
  monkeypatch.undo()
  os.remove(rundir.metrics_path)
  with pytest.raises(UserError, match="no such metrics file"):
    rundir.read_metrics()


def test_a_run_lock_that_cannot_be_emptied_at_the_end_does_not_fail_the_run(tmp_path,
                                                                           monkeypatch, caplog):
  """A lost mount or a filesystem remounted read-only as the run ends: emptying run.lock raised,
  a traceback after a run that ended well, or one in place of the error a run ended on."""
  rundir = run_dir.RunDir(str(tmp_path / "run"))

  def fails(fd: int, length: int) -> None:
    raise OSError(errno.EROFS, os.strerror(errno.EROFS))

  with rundir.lock():
    pathlib.Path(rundir.metrics_path).write_text("")  # a run's file: run.lock stays
    monkeypatch.setattr(run_dir.os, "ftruncate", fails)
  assert "cannot clear this run's name from it (Read-only file system)" in caplog.text
  with pytest.raises(UserError, match="save failed"), rundir.lock():
    raise UserError("save failed")
  monkeypatch.undo()
  with rundir.lock():  # released all the same: the next run takes it over
    pass
  assert "taking over the lock left by a run that is no longer running" in caplog.text


def test_the_flags_a_refusal_names_hold_a_path_with_spaces_whole(tmp_path, monkeypatch):
  """Copied into a shell, `--config.data_dir=/my data/x` set data_dir=/my and a stray word."""
  rundir = run_dir.RunDir(str(tmp_path / "my runs" / "run"))
  os.makedirs(rundir.out_dir)
  ckpt = os.path.join(rundir.out_dir, "ckpt.pt")  # nanoGPT's out_dir
  pathlib.Path(ckpt).write_bytes(b"")
  with pytest.raises(UserError, match=re.escape(f"--config.init_from='nanogpt:{ckpt}' (")):
    rundir.check_start(resume=True)
  read = tmp_path / "my data" / "x"
  read.mkdir(parents=True)
  saved = rundir.checkpoints()
  saved.save(1, {"w": np.ones(2, np.float32)}, None, {"iter": 1, "data": {"data_dir": str(read)}})
  saved.wait()
  saved.close()
  monkeypatch.chdir(tmp_path)
  with pytest.raises(UserError, match=re.escape(f"add --config.data_dir='{read}'")):
    resume.check_data_found(rundir.checkpoints_dir, "data/x")
