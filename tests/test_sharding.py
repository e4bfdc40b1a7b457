"""Data parallel and FSDP over simulated devices and over two real processes."""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest
from conftest import (
  PYTHONPATH,
  TINY_VOCAB,
  communicate_all,
  fake_device,
  free_port,
  pattern_tokens,
  records,
  restore_state,
  run_python,
  setup_of,
  start_launch,
  step_of,
  tiny_config,
  write_config_file,
)
from jax.experimental import multihost_utils

from jaxgpt import data, defaults, run_dir, sharding, train, train_step
from jaxgpt.errors import UserError
from jaxgpt.prep import shards

HERE = os.path.dirname(os.path.abspath(__file__))


def sharded_run(tmp_path, token_dir: str, name: str, devices: int = 1, **overrides) -> list:
  """Runs tests/sharded_run.py on `devices` simulated CPU devices; returns its JSON line."""
  out = str(tmp_path / name)
  cmd = [sys.executable, os.path.join(HERE, "sharded_run.py"), f"--devices={devices}",
         f"--out={out}", f"--data={token_dir}", f"--overrides={json.dumps(overrides)}"]
  env = dict(os.environ, PYTHONPATH=PYTHONPATH)
  r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
  assert r.returncode == 0, r.stderr[-3000:]
  return json.loads(r.stdout.strip().splitlines()[-1])


def train_losses(out_dir: str) -> list[float]:
  """Loss and gradient norm of every iteration: both must match across device counts."""
  return [(r["loss"], r["grad_norm"]) for r in records(os.path.join(out_dir, "run"), "train")]


# A gentle learning rate: Adam turns float noise in near-zero gradients into visible steps.
RUN = {"max_iters": 4, "eval_interval": 4, "lr_decay_iters": 8, "gradient_accumulation_steps": 2,
       "learning_rate": 1e-3, "min_lr": 1e-4}


def test_leaf_spec_splits_matrices_along_their_largest_divisible_axis():
  assert sharding.leaf_spec((96, 32), 8, "fsdp") == jax.sharding.PartitionSpec("data", None)
  assert sharding.leaf_spec((32, 96), 8, "fsdp") == jax.sharding.PartitionSpec(None, "data")
  assert sharding.leaf_spec((30, 12), 8, "fsdp") == jax.sharding.PartitionSpec()
  assert sharding.leaf_spec((96,), 8, "fsdp") == jax.sharding.PartitionSpec()
  assert sharding.leaf_spec((96, 32), 8, "dp") == jax.sharding.PartitionSpec()


def test_processes_with_unequal_devices_are_refused(monkeypatch):
  """Each process reads an equal share of every batch: 3 GPUs on one host and 4 on another
  would read some windows twice and skip others."""
  devices = [fake_device(process_index=p) for p in (0, 0, 0, 1, 1, 1, 1)]
  monkeypatch.setattr(jax, "devices", lambda: devices)
  with pytest.raises(UserError, match=r"different numbers of devices \(process 0: 3, "
                                      r"process 1: 4\)"):
    sharding.make_mesh()


@pytest.mark.slow
@pytest.mark.parametrize("mode,recipe", [("dp", {}), ("fsdp", {}), ("fsdp", defaults.MODERN)],
                         ids=["dp", "fsdp", "fsdp-modern"])
def test_eight_devices_train_like_one_device_with_the_same_global_batch(tmp_path, token_dir,
                                                                        mode, recipe):
  """Micro-batches of 8 loss chunks: fsdp's interleaved (each split over the 8 devices)."""
  run = {**RUN, **recipe, "loss_chunk_size": 16}
  one = sharded_run(tmp_path, token_dir, "one", devices=1, batch_size=8, **run)
  eight = sharded_run(tmp_path, token_dir, mode, devices=8, batch_size=1, sharding=mode, **run)
  assert eight["devices"] == 8
  np.testing.assert_allclose(train_losses(str(tmp_path / mode)),
                             train_losses(str(tmp_path / "one")), rtol=2e-5)
  np.testing.assert_allclose(eight["losses"]["val"], one["losses"]["val"], rtol=2e-5)
  if mode == "fsdp":
    assert eight["wte_shard_shape"] == [96 // 8, 32]  # really split over the 8 devices
  else:
    assert eight["wte_shard_shape"] == eight["wte_shape"]


EVAL_ON_4 = """
import json, pathlib, sys
import jax, jax.numpy as jnp, numpy as np
sys.path.insert(0, "tests")
from conftest import pattern_tokens, tiny_config
from jaxgpt import sharding, train_step
from jaxgpt.bench import collectives
from jaxgpt.inference import scoring
step = train_step.StepConfig.from_config(tiny_config(pathlib.Path(sys.argv[1]), "", batch_size=2,
                                                     loss_chunk_size=16))
mesh = sharding.make_mesh()
setup = train_step.build(step)
model, rng = setup.model, np.random.default_rng(0)
# Random params of the init's shapes, not compiled from it; wide enough that each row's loss
# depends on its tokens, not on its count of scored ones alone.
params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.3, s.shape), s.dtype),
                      setup.abstract_state.params)
tokens = jnp.asarray(pattern_tokens(8 * 17).reshape(8, 17))
batch = jax.device_put(tokens, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
out = {}
for name, dp_mesh in (("xla", None), ("mapped", train_step.data_parallel(step, mesh))):
  f = train_step.make_eval_step(model, dp_mesh)
  out[name] = [float(f(params, batch)), float(f(params, tokens[:3])),
               collectives.collectives(f.lower(params, batch).compile().as_text(), mesh.size)]
  scorer = scoring.Scorer(model, mesh, rows_per_batch=8, data_parallel=dp_mesh is not None)
  batches = scorer.batches([(tokens[i].tolist(), 9 + i) for i in range(8)])  # one bucket
  placed = [scorer._place(x) for x in batches[0][1:]]
  out[name + " tasks"] = [scorer.loss_sums(params, batches, 8).tolist(), collectives.collectives(
      scorer._loss_sums.lower(params, *placed).compile().as_text(), mesh.size)]
print(json.dumps(out))
"""


def test_a_data_parallel_evaluation_takes_each_device_s_share_alone(tmp_path):
  """With the chunked head, XLA gathered every device's hidden states and computed every
  chunk on each device; mapped, each takes its share and one scalar is averaged (the eval
  tasks' rows: their sums gathered). XLA leaves the CPU code unoptimised, as
  data_parallel_on_2 does: the same programs' collectives and losses in less compile time."""
  r = run_python("-c", EVAL_ON_4, str(tmp_path),
                 XLA_FLAGS="--xla_force_host_platform_device_count=4 "
                           "--xla_backend_optimization_level=0")
  assert r.returncode == 0, r.stderr[-3000:]
  out = json.loads(r.stdout.strip().splitlines()[-1])
  assert "all-gather" in out["xla"][2]  # what the mapping avoids
  assert set(out["mapped"][2]) == {"all-reduce"} and out["mapped"][2]["all-reduce"] < 100
  np.testing.assert_allclose(out["mapped"][:2], out["xla"][:2], rtol=1e-6)  # 3 rows: unmapped
  tasks_xla, tasks_mapped = out["xla tasks"], out["mapped tasks"]  # eval_tasks' row losses too
  assert tasks_mapped[1]["all-gather"] < 100  # 8 sums
  # XLA's split rows take interleaved chunks (fsdp's): the same sums, each at its row.
  np.testing.assert_allclose(tasks_mapped[0], tasks_xla[0], rtol=1e-6)


FSDP_STEP_ON_8 = r"""
import json, math, pathlib, re, sys
import jax
sys.path.insert(0, "tests")
from conftest import tiny_config
from jaxgpt import sharding, train_step
from jaxgpt.inference import scoring
config = tiny_config(pathlib.Path(sys.argv[1]), "", batch_size=8, block_size=64,
                     loss_chunk_size=16, sharding="fsdp")
setup = train_step.build(train_step.StepConfig.from_config(config))
mesh = sharding.make_mesh()
params = sharding.abstract_like(setup.abstract_state.params, sharding.state_shardings(
    setup.abstract_state, mesh, "fsdp").params)
batch = jax.ShapeDtypeStruct((8, 65), "uint16", sharding=sharding.batch_sharding(mesh, 2, 0))
steps = {"train": train_step.compile_train_step(setup, mesh), "eval": train_step.make_eval_step(
    train_step.model_on(setup, mesh)).lower(params, batch).compile()}
rows = [jax.ShapeDtypeStruct((8, 64), dtype, sharding=sharding.batch_sharding(mesh, 2, 0))
        for dtype in ("int32", "int32", "int32", "float32")]  # inputs, scored, targets, weights
steps["tasks"] = scoring.Scorer(setup.model, mesh, rows_per_batch=8)._loss_sums.lower(
    params, *rows).compile()  # as launch's eval_tasks under fsdp
print(json.dumps({"largest_param": max(4 * x.size for x in jax.tree.leaves(params)), **{
    name: [4 * math.prod(int(d) for d in dims.split(",") if d)
           for dims in re.findall(r"= f32\[([\d,]*)\]\S* all-gather\(", step.as_text())]
    for name, step in steps.items()}}))
"""


@pytest.mark.slow
def test_the_fsdp_step_gathers_the_params_and_not_the_hidden_states(tmp_path):
  """8 devices, 256 loss chunks a micro-batch (32 an eval batch, 32 of the eval tasks' 8 x 64
  scored tokens): with contiguous chunks (split over the chunk axis) each chunk all-gathered
  the whole micro-batch's hidden states, f32[256,16,32] here (21 GiB a step for gpt2_124m on
  8 H100s), the eval step the batch's (11.6 GB a batch), and the eval tasks' scorer its
  batch's, f32[512,32]; interleaved, no gather exceeds the largest param."""
  r = run_python("-c", FSDP_STEP_ON_8, str(tmp_path),
                 XLA_FLAGS="--xla_force_host_platform_device_count=8")
  assert r.returncode == 0, r.stderr[-3000:]
  out = json.loads(r.stdout.strip().splitlines()[-1])
  assert out["train"] and max(out["train"]) <= out["largest_param"], out
  assert out["eval"] and max(out["eval"]) <= out["largest_param"], out  # the eval step's too
  assert out["tasks"] and max(out["tasks"]) <= out["largest_param"], out  # and eval_tasks'


FSDP_SENT_ON_8 = r"""
import json, pathlib, sys
sys.path.insert(0, "tests")
from conftest import tiny_config
from jaxgpt import sharding, train_step
from jaxgpt.bench import collectives
sent = []
for batch_size in (4, 8):
  config = tiny_config(pathlib.Path(sys.argv[1]), "", batch_size=batch_size, block_size=64,
                       loss_chunk_size=16, sharding="fsdp")
  compiled = train_step.compile_train_step(train_step.build(
      train_step.StepConfig.from_config(config)), sharding.make_mesh())
  sent.append(sum(collectives.collectives(compiled.as_text(), 8).values()))
print(json.dumps(sent))
"""


@pytest.mark.slow
def test_the_fsdp_step_sends_the_weights_and_not_the_head_s_rows(tmp_path):
  """8 devices, micro-batches of 2,048 and 4,096 tokens over a 96-token vocabulary: the head
  runs on each device's own rows, so a larger micro-batch sends no more. XLA split the head's
  vocabulary over the devices and sent every chunk's rows and their gradient (here 1.8x the
  bytes at twice the rows; gpt2_124m on 8 H100s at 2 x 32: 3.30 GiB a device per iteration,
  now 1.57)."""
  r = run_python("-c", FSDP_SENT_ON_8, str(tmp_path),
                 XLA_FLAGS="--xla_force_host_platform_device_count=8")
  assert r.returncode == 0, r.stderr[-3000:]
  small, large = json.loads(r.stdout.strip().splitlines()[-1])
  assert large < 1.01 * small, (small, large)  # the loss sum's scalar, a chunk at a time


FSDP_ON_6 = r"""
import json, pathlib, sys
import jax, jax.numpy as jnp
sys.path.insert(0, "tests")
from conftest import pattern_tokens, tiny_config
from jaxgpt import sharding, train_step
from jaxgpt.bench import collectives
from jaxgpt.model import GPT, init_params
mesh, sent = sharding.make_mesh(), []
for batch_size in (2, 4):
  config = tiny_config(pathlib.Path(sys.argv[1]), "", batch_size=batch_size, block_size=64,
                       loss_chunk_size=80, sharding="fsdp")
  setup = train_step.build(train_step.StepConfig.from_config(config))
  compiled = train_step.compile_train_step(setup, mesh)
  sent.append(sum(collectives.collectives(compiled.as_text(), 6).values()))
params = init_params(setup.model, jax.random.PRNGKey(0))
tokens = jnp.asarray(pattern_tokens(24 * 65).reshape(24, 65))
loss_and_grads = jax.jit(lambda model, p, t: jax.value_and_grad(lambda p: model.apply(
    {"params": p}, t[:, :-1], t[:, 1:], method=GPT.loss))(p), static_argnums=0)
one = loss_and_grads(setup.model, params, tokens)
six = loss_and_grads(train_step.model_on(setup, mesh), jax.device_put(params, sharding.state_shardings(
    setup.abstract_state, mesh, "fsdp").params), jax.device_put(tokens, sharding.batch_sharding(mesh, 2, 0)))
print(json.dumps({"sent": sent, "one": jax.tree.map(lambda a: a.tolist(), one),
                  "six": jax.tree.map(lambda a: a.tolist(), six)}))
"""


@pytest.mark.slow
def test_fsdp_on_six_devices_lines_its_loss_chunks_up_with_each_device_s_rows(tmp_path):
  """6 devices, 128 and 256 rows a device, chunks of at most 80 tokens: 10 and 20 chunks
  divided neither, so XLA moved rows for every chunk and the head could not take each
  device's own (gpt2_124m on 6 H100s: 45.8 GiB a device per iteration, 12.0 in 32 chunks).
  The same loss and gradients as one device's, and a larger micro-batch sends no more."""
  r = run_python("-c", FSDP_ON_6, str(tmp_path),
                 XLA_FLAGS="--xla_force_host_platform_device_count=6")
  assert r.returncode == 0, r.stderr[-3000:]
  out = json.loads(r.stdout.strip().splitlines()[-1])
  small, large = out["sent"]
  assert large < 1.01 * small, (small, large)
  for six, one in zip(jax.tree.leaves(out["six"]), jax.tree.leaves(out["one"]), strict=True):
    np.testing.assert_allclose(six, one, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_fsdp_checkpoint_resumes_on_one_device(tmp_path, token_dir):
  """Saved by 4 devices under fsdp, continued by 1: same losses as an unbroken 1-device run."""
  sharded_run(tmp_path, token_dir, "split", devices=4, batch_size=2, sharding="fsdp", **RUN)
  resumed = tiny_config(tmp_path / "split", token_dir, batch_size=8, init_from="resume",
                        **dict(RUN, max_iters=8))
  train.train(resumed)
  unbroken = tiny_config(tmp_path / "whole", token_dir, batch_size=8, **dict(RUN, max_iters=8))
  train.train(unbroken)
  np.testing.assert_allclose(train_losses(str(tmp_path / "split")),
                             train_losses(str(tmp_path / "whole")), rtol=2e-5)


def run_two(out: str, token_dir: str, timeout: float, *, flags: tuple[str, ...] = (),
            own_flags: tuple[tuple[str, ...], ...] = ((), ()),
            **overrides) -> list[subprocess.CompletedProcess]:
  """Runs tests/sharded_run.py (with `flags`, and each process with its `own_flags`) as the
  two processes of one run, to their end."""
  port = free_port()
  env = dict(os.environ, PYTHONPATH=PYTHONPATH)
  args = [[sys.executable, os.path.join(HERE, "sharded_run.py"), f"--out={out}",
           f"--data={token_dir}", f"--process_id={i}", "--num_processes=2",
           f"--coordinator=localhost:{port}", f"--overrides={json.dumps(overrides)}", *flags,
           *own_flags[i]] for i in range(2)]
  procs = [subprocess.Popen(a, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for a in args]
  try:
    outputs = communicate_all(procs, timeout)
    return [subprocess.CompletedProcess(a, p.returncode, *output)
            for a, p, output in zip(args, procs, outputs)]
  finally:
    for p in procs:
      p.kill()


def two_processes(out: str, token_dir: str, timeout: float = 600, **overrides) -> list[dict]:
  """The JSON lines of two processes that ran one run together and succeeded."""
  results = []
  for done in run_two(out, token_dir, timeout, **overrides):
    assert done.returncode == 0, done.stderr[-3000:]
    results.append(json.loads(done.stdout.strip().splitlines()[-1]))
  return results


@pytest.mark.slow
def test_two_processes_train_together_and_one_restores_their_checkpoint(tmp_path, token_dir):
  out = str(tmp_path / "multi")
  results = two_processes(out, token_dir, batch_size=4, **RUN)
  assert [r["process"] for r in results] == [0, 1]
  assert results[0]["devices"] == 2
  assert results[0]["losses"] == results[1]["losses"]  # one replicated loss, not two

  one = sharded_run(tmp_path, token_dir, "one", devices=1, batch_size=8, **RUN)
  np.testing.assert_allclose(train_losses(out), train_losses(str(tmp_path / "one")), rtol=2e-5)
  np.testing.assert_allclose(results[0]["losses"]["val"], one["losses"]["val"], rtol=2e-5)

  # This single process restores what the two wrote cooperatively.
  config = tiny_config(tmp_path / "multi", token_dir, batch_size=8, **RUN)
  state, meta = restore_state(config, 4)
  assert meta["iter"] == 4
  val = data.open_split(token_dir, "val", config.block_size, config.vocab_size)
  layout = step_of(config).layout(sharding.make_mesh())
  eval_step = train_step.make_eval_step(setup_of(config).model)
  windows = config.eval_iters * meta["data"]["eval_batch_windows"]  # the run's own evaluation set
  losses = train.val_losses(eval_step, state.params, {"val": val}, windows, config.seed, layout)
  np.testing.assert_allclose(losses["val"], results[0]["losses"]["val"], rtol=2e-5)


@pytest.mark.slow
def test_two_processes_go_on_from_a_checkpoint_whose_data_position_one_cannot_read(
    tmp_path, token_dir):
  """Only process 1's data position of step 4 is broken: both start at the window step 4
  reached, so they train on from step 4 exactly as from the intact checkpoint, and the
  checkpoint they save next resumes as the intact run's does. Process 1 says why; what is
  the same on every process is said by process 0 alone."""
  out, intact = tmp_path / "multi", tmp_path / "intact"
  every_2 = dict(RUN, eval_interval=2, batch_size=4)
  two_processes(str(out), token_dir, **every_2)
  shutil.copytree(out, intact)
  with open(out / "run" / "checkpoints" / "4" / "data" / "process_1-of-2.json", "w") as f:
    f.write("xx{")
  resumed = dict(every_2, max_iters=6, init_from="resume", eval_iters=3)  # a change warned of
  broken = run_two(str(out), token_dir, 600, **resumed)
  assert [done.returncode for done in broken] == [0, 0], broken[0].stderr[-3000:]
  said = "resume: the data position saved with step 4 does not read back ("
  assert f"{said}reading the data position failed on process(es) [1]" in broken[0].stderr
  assert f"{said}a JSON file" in broken[1].stderr  # the cause, where it was met
  changed = "resume: eval_iters changed"
  assert changed in broken[0].stderr and changed not in broken[1].stderr
  two_processes(str(intact), token_dir, **resumed)
  for base in (out, intact):
    two_processes(str(base), token_dir, **dict(every_2, max_iters=8, init_from="resume"))
  assert sorted(os.listdir(out / "run" / "checkpoints")) == ["4", "6", "8"]
  trained = [records(str(base / "run"), "train") for base in (out, intact)]
  assert [r["iter"] for r in trained[0]] == list(range(8))
  assert [r["loss"] for r in trained[0]] == [r["loss"] for r in trained[1]]
  done = run_two(str(out), token_dir, 600, **dict(every_2, max_iters=8, init_from="resume"))
  said = "the checkpoint is at iteration 8 and max_iters=8: nothing to train"
  assert said in done[0].stderr and said not in done[1].stderr


@pytest.mark.slow
def test_two_processes_fall_back_together_when_one_cannot_read_its_slices_of_the_newest_state(
    tmp_path, token_dir):
  """Under fsdp each process reads its own slices of the state: only process 1's of step 4
  are broken. Neither waits for the other at a barrier; both resume from step 2."""
  out = str(tmp_path / "multi")
  every_2 = dict(RUN, eval_interval=2, batch_size=4, sharding="fsdp")
  two_processes(out, token_dir, **every_2)
  first = records(os.path.join(out, "run"), "train")
  checkpoints = os.path.join(out, "run", "checkpoints")
  slices = os.path.join(checkpoints, "4", "state", "ocdbt.process_1", "d")
  for name in os.listdir(slices):
    os.truncate(os.path.join(slices, name), 10)
  two_processes(out, token_dir, init_from="resume", **every_2)
  assert sorted(os.listdir(checkpoints)) == ["2", "4", "4.unreadable"]
  again = records(os.path.join(out, "run"), "train")
  assert [r["iter"] for r in again] == [0, 1, 2, 3]
  assert [r["loss"] for r in again] == [r["loss"] for r in first]


@pytest.mark.slow
def test_the_start_s_warnings_are_said_by_one_process(tmp_path, token_dir):
  """Every process logs warnings; those of the run's plan are the run's, said once."""
  done = run_two(str(tmp_path / "multi"), token_dir, timeout=240,
                 **{**RUN, "max_iters": 0, "eval_iters": 20})  # 80 of 62 val windows
  assert [d.returncode for d in done] == [0, 0], done[0].stderr[-3000:]
  said = "evaluation: the val split holds 62 windows, so each evaluation scores each about"
  assert said in done[0].stderr and said not in done[1].stderr


@pytest.mark.slow
def test_two_processes_stop_together_when_process_0_cannot_load_a_library(tmp_path, token_dir):
  """Process 0 alone loads W&B (absent here): process 1 stops with it at start-up instead of
  waiting for it at the first step."""
  if importlib.util.find_spec("wandb") is not None:
    pytest.skip("wandb is installed")
  done = run_two(str(tmp_path / "multi"), token_dir, timeout=240, wandb_log=True, **RUN)
  assert [d.returncode for d in done] == [1, 1]
  assert "config.wandb_log=True needs the 'wandb' package" in done[0].stderr
  assert "loading tensorboardX or W&B failed on process(es) [0], whose error says why" in done[1].stderr
  assert not os.path.exists(os.path.join(tmp_path, "multi", "run", "metrics.jsonl"))


@pytest.mark.slow
def test_two_processes_stop_together_when_another_run_holds_the_run_directory(tmp_path,
                                                                             token_dir):
  """Process 0 alone takes the lock: process 1 stops with it instead of waiting for it."""
  run = tmp_path / "multi" / "run"
  run.mkdir(parents=True)
  held = os.open(run / "run.lock", os.O_RDWR | os.O_CREAT)
  fcntl.flock(held, fcntl.LOCK_EX)
  os.pwrite(held, b"pid 1 on elsewhere", 0)
  try:
    done = run_two(str(tmp_path / "multi"), token_dir, timeout=240, **RUN)
  finally:
    os.close(held)
  assert [d.returncode for d in done] == [1, 1]
  assert f"{run} is in use by another run (pid 1 on elsewhere)" in done[0].stderr
  assert ("locking the run directory failed on process(es) [0], whose error says why"
          in done[1].stderr)
  assert os.listdir(run) == ["run.lock"]


@pytest.mark.slow
def test_two_processes_stop_together_when_process_0_cannot_write_the_run_s_files(tmp_path,
                                                                                 token_dir):
  run = tmp_path / "multi" / "run"
  (run / "config.json").mkdir(parents=True)  # stands in for a file process 0 cannot write
  done = run_two(str(tmp_path / "multi"), token_dir, timeout=240, **RUN)
  assert [d.returncode for d in done] == [1, 1]
  assert "Is a directory" in done[0].stderr and "config.json" in done[0].stderr
  assert ("writing the run's files failed on process(es) [0], whose error says why"
          in done[1].stderr)
  assert not os.path.exists(run / "metrics.jsonl")


@pytest.mark.slow
def test_two_processes_stop_together_when_process_0_cannot_write_the_metrics(tmp_path,
                                                                             token_dir):
  """Process 0 alone writes metrics.jsonl: where its disk is full both stop at the next log
  interval, saying why, instead of process 1 waiting for it at the next step."""
  done = run_two(str(tmp_path / "multi"), token_dir, timeout=240,
                 flags=("--full_disk_from_iter=3",),
                 **dict(RUN, max_iters=20, eval_interval=10, log_interval=2))
  assert [d.returncode for d in done] == [1, 1]
  assert ("writing the train record of iteration 4 failed: No space left on device [errno 28]"
          in done[0].stderr)
  assert ("a checkpoint save or a metrics write failed on process(es) [0], whose error says "
          "why") in done[1].stderr
  trained = records(str(tmp_path / "multi" / "run"), "train")
  assert [r["iter"] for r in trained] == [0, 2]


@pytest.mark.slow
def test_two_processes_started_with_different_configs_stop_naming_the_keys(tmp_path,
                                                                          token_dir):
  """Another learning rate would train each process's copy of the params apart, with
  checkpoints none of them reads back; another max_iters would leave one waiting forever."""
  other = f"--overrides={json.dumps(dict(RUN, learning_rate=2e-3, max_iters=6))}"
  done = run_two(str(tmp_path / "multi"), token_dir, timeout=240, own_flags=((), (other,)),
                 **RUN)
  assert [d.returncode for d in done] == [1, 1]
  for d in done:
    assert ("UserError: the processes were started with different configs (learning_rate, "
            "max_iters differ)") in d.stderr, d.stderr[-2000:]
  assert not os.path.exists(tmp_path / "multi" / "run")


@pytest.mark.slow
def test_two_processes_whose_token_files_differ_or_fail_stop_together(tmp_path, token_dir):
  """Hosts with copies of their own: one whose val shard is missing left the other waiting
  300 s and both aborted; one with a shard more trained with the other, without a word."""
  for host in ("host0", "host1"):  # one data_dir, "data", that is each host's own copy
    shutil.copytree(token_dir, tmp_path / host / "data")
  os.remove(tmp_path / "host1" / "data" / "syn_train_000001.bin")
  hosts = ((f"--cwd={tmp_path / 'host0'}",), (f"--cwd={tmp_path / 'host1'}",))
  done = run_two(str(tmp_path / "multi"), "data", timeout=240, own_flags=hosts, **RUN)
  assert [d.returncode for d in done] == [1, 1]
  for d, here in zip(done, ("0: train 5,000 tokens in 311 windows, val 1,000 tokens in 62",
                            "1: train 3,000 tokens in 187 windows, val 1,000 tokens in 62")):
    assert ("the processes read different token files in data (their train splits differ; on "
            f"process {here} windows): give every host the same copy") in d.stderr, (
                d.stderr[-2000:])
  os.remove(tmp_path / "host1" / "data" / "syn_val_000000.bin")
  done = run_two(str(tmp_path / "multi"), "data", timeout=240, own_flags=hosts, **RUN)
  assert [d.returncode for d in done] == [1, 1]
  assert "reading the token files failed on process(es) [1], whose error says why" in (
      done[0].stderr)
  assert "data: no 'val' token files" in done[1].stderr
  assert not os.path.exists(tmp_path / "multi" / "run" / "metrics.jsonl")


def test_hosts_whose_val_copies_differ_in_tokens_alone_are_told_apart(tmp_path, token_dir,
                                                                     monkeypatch):
  """Copies of as many val tokens, but other ones (one host's made anew): on a resume each
  process measured its best apart (one afresh, the other not), and their saves under
  always_save_checkpoint=False went apart, a hang. The start compares the val tokens too."""
  compared = []
  monkeypatch.setattr(sharding, "check_same", lambda values, error: compared.append(values))
  other = shutil.copytree(token_dir, tmp_path / "other")
  shards.write_shard(str(other / "syn_val_000000.bin"), pattern_tokens(1000, seed=4))
  for data_dir in (token_dir, str(other)):
    train._open_data(data_dir, block_size=16, vocab_size=TINY_VOCAB, seed=1337)
  assert compared[0]["train"] == compared[1]["train"]
  assert compared[0]["val"] != compared[1]["val"]


@pytest.mark.slow
def test_two_processes_with_unequal_devices_stop_as_they_join(tmp_path, token_dir):
  done = run_two(str(tmp_path / "multi"), token_dir, timeout=240,
                 own_flags=(("--devices=1",), ("--devices=2",)), **RUN)
  assert [d.returncode for d in done] == [1, 1]
  for d in done:  # said as they join, not by the first collective's reshape (launch.py: a line)
    assert ("UserError: the processes drive different numbers of devices (process 0: 1, "
            "process 1: 2)") in d.stderr, d.stderr[-2000:]


def test_processes_read_disjoint_windows_that_together_make_the_global_batch(token_dir):
  src = data.open_split(token_dir, "train", block_size=16, vocab_size=96)
  batches = lambda index, count, size: next(iter(data.train_dataset(
      src, accum_steps=2, batch_size=size, seed=3, workers=0, shard_index=index,
      shard_count=count)))
  whole = batches(0, 1, 8)
  parts = [batches(i, 2, 4) for i in range(2)]
  rows = lambda b: {tuple(w) for w in b.reshape(-1, 17).tolist()}
  assert not rows(parts[0]) & rows(parts[1])
  assert rows(parts[0]) | rows(parts[1]) == rows(whole)


SRUN = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "8"}
EIGHT_GPUS = {"CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}
MPIRUN = {"OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.0.0.1:34911",  # Open MPI 4's
          "OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_LOCAL_RANK": "1"}
LAUNCH_ENV = ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS", "SLURM_STEP_NUM_NODES",
              "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "OMPI_COMM_WORLD_RANK",
              "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_MCA_orte_hnp_uri", "CUDA_VISIBLE_DEVICES",
              "JAX_LOCAL_DEVICE_IDS", "SLURM_STEP_ID", "JAX_COORDINATOR_PORT",
              "JAX_COORDINATOR_ADDRESS", "TORCHELASTIC_RUN_ID", "WORLD_SIZE")


def _joins(monkeypatch, tmp_path, env: dict[str, str], driver_gpus: int = 0, **flags) -> list:
  """What jax.distributed.initialize is given under `env` (a list of its keyword arguments,
  empty where the process runs alone), with the NVIDIA driver showing `driver_gpus` GPUs."""
  for key in LAUNCH_ENV:  # set, then removed: the undo also removes what the run sets
    monkeypatch.setenv(key, "")
    monkeypatch.delenv(key)
  for key, value in env.items():
    monkeypatch.setenv(key, value)
  for i in range(driver_gpus):
    (tmp_path / f"0000:{i:02x}:00.0").mkdir()
  monkeypatch.setattr(sharding, "NVIDIA_GPUS_DIR", str(tmp_path))
  joined = []
  monkeypatch.setattr(jax.config, "update", lambda *args: None)
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: joined.append(kw))
  sharding.maybe_initialize_distributed(**flags)
  return joined


@pytest.mark.parametrize("env,joins,driver_gpus", [
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "8"}, None, 8),  # a batch script's own shell
    ({**SRUN, "SLURM_STEP_NUM_NODES": "1", **EIGHT_GPUS}, {}, 8),  # a process per GPU
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1", "SLURM_STEP_NUM_TASKS": "1"}, None, 8),
    ({**MPIRUN, "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}, {}, 2),
    # One process per node drives the node's GPUs (JAX would give it GPU 0 alone) ...
    ({**SRUN, "SLURM_STEP_NUM_NODES": "8", **EIGHT_GPUS}, {"local_device_ids": list(range(8))},
     0),
    ({**MPIRUN, "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_SIZE": "1",
      "CUDA_VISIBLE_DEVICES": "GPU-a1,GPU-b2"}, {"local_device_ids": [0, 1]}, 8),
    # ... the driver's, where no scheduler names them ...
    ({**MPIRUN, "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_SIZE": "1"},
     {"local_device_ids": [0, 1, 2, 3]}, 4),
    # ... unless the user chose them.
    ({**SRUN, "SLURM_STEP_NUM_NODES": "8", **EIGHT_GPUS, "JAX_LOCAL_DEVICE_IDS": "0,1"}, {}, 8),
    # A task given one GPU (--gpus-per-task=1) sees it as GPU 0, whatever its local rank.
    ({**SRUN, "SLURM_STEP_NUM_NODES": "1", "CUDA_VISIBLE_DEVICES": "3"},
     {"local_device_ids": [0]}, 8),
    # mpirun inside a SLURM allocation: its ranks inherit a step's variables; Open MPI's count.
    ({**MPIRUN, "OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_LOCAL_SIZE": "8",
      "SLURM_JOB_ID": "7", "SLURM_NTASKS": "1", "SLURM_STEP_NUM_TASKS": "1",
      "SLURM_STEP_NUM_NODES": "1", **EIGHT_GPUS}, {}, 8),
    ({**MPIRUN, "OMPI_COMM_WORLD_SIZE": "24", "OMPI_COMM_WORLD_LOCAL_SIZE": "8",
      "SLURM_JOB_ID": "7", "SLURM_NTASKS": "2", "SLURM_STEP_NUM_TASKS": "2",
      "SLURM_STEP_NUM_NODES": "2", **EIGHT_GPUS}, {}, 8),
])
def test_only_a_launcher_s_processes_join_a_multi_process_job(monkeypatch, tmp_path, caplog, env,
                                                              joins, driver_gpus):
  """SLURM_NTASKS is the allocation's: python run in an sbatch script without srun is one
  process (joining would wait for 7 that never start), and says so. `joins` is what
  jax.distributed.initialize is given, None where the process runs alone."""
  joined = _joins(monkeypatch, tmp_path, env, driver_gpus)
  assert joined == ([] if joins is None else [joins])
  alone = env.get("SLURM_NTASKS") == "8" and joins is None
  assert ("not started by srun" in caplog.text) == alone


def test_torchrun_s_processes_are_told_to_run_one(monkeypatch, tmp_path):
  """nanoGPT's `torchrun --nproc_per_node=8`: 8 processes, each driving every GPU beside the
  others (all contending for their memory and the run directory). One alone under it runs."""
  torchrun = {"TORCHELASTIC_RUN_ID": "none", "WORLD_SIZE": "8"}
  with pytest.raises(UserError, match=r"^started by torchrun as one of 8 processes, which do not "
                     r"join: run `python launch.py \.\.\.` without torchrun, one process a host"):
    _joins(monkeypatch, tmp_path, torchrun)
  assert _joins(monkeypatch, tmp_path, {**torchrun, "WORLD_SIZE": "1"}) == []


def test_two_slurm_steps_of_one_job_listen_on_different_ports(monkeypatch, tmp_path):
  """JAX takes process 0's port from the job id alone, so two srun steps of one allocation
  running at once (a sweep) would listen on one port of their first node. Step 0 keeps JAX's
  port; a port the user set, or a coordinator named, wins."""
  step = lambda i, **extra: {**SRUN, "SLURM_STEP_NUM_NODES": "8", "SLURM_STEP_ID": str(i), **extra}
  ports = []
  for i in range(3):
    _joins(monkeypatch, tmp_path, step(i))
    ports.append(os.environ["JAX_COORDINATOR_PORT"])
  assert ports[0] == str(65535 - 4096 + 1 + 7)  # jax/_src/clusters/slurm_cluster.py's
  assert len(set(ports)) == 3
  _joins(monkeypatch, tmp_path, step(1, JAX_COORDINATOR_PORT="40000"))
  assert os.environ["JAX_COORDINATOR_PORT"] == "40000"
  _joins(monkeypatch, tmp_path, step(1), coordinator_address="node0:1234")
  assert "JAX_COORDINATOR_PORT" not in os.environ


def test_an_open_mpi_5_job_is_told_to_name_process_0(monkeypatch, tmp_path):
  """Open MPI 5 sets no OMPI_MCA_orte_hnp_uri, all JAX's detection reads: without
  --coordinator_address the run says to pass it; with it, Open MPI's ranks fill the rest. It
  said so too where JAX_COORDINATOR_ADDRESS, which JAX reads, named process 0."""
  env = {"OMPI_COMM_WORLD_SIZE": "16", "OMPI_COMM_WORLD_LOCAL_SIZE": "8",
         "OMPI_COMM_WORLD_RANK": "11", "OMPI_COMM_WORLD_LOCAL_RANK": "3", **EIGHT_GPUS}
  with pytest.raises(UserError, match="Open MPI 5.*--coordinator_address=HOST:PORT"):
    _joins(monkeypatch, tmp_path, env)
  joined = _joins(monkeypatch, tmp_path, env, coordinator_address="node0:1234")
  assert joined == [{"coordinator_address": "node0:1234", "num_processes": 16,
                     "process_id": 11, "local_device_ids": [3]}]
  # JAX's own variable names process 0 as well (`mpirun -x JAX_COORDINATOR_ADDRESS=...`).
  joined = _joins(monkeypatch, tmp_path, {**env, "JAX_COORDINATOR_ADDRESS": "node0:1234"})
  assert joined == [{"num_processes": 16, "process_id": 11, "local_device_ids": [3]}]


def _wait_until_listening(port: int, proc: subprocess.Popen, timeout: float) -> None:
  """Returns once something listens on localhost:`port`: process 0's coordinator, say."""
  deadline = time.monotonic() + timeout
  while proc.poll() is None and time.monotonic() < deadline:
    with socket.socket() as s:
      if s.connect_ex(("localhost", port)) == 0:
        return
    time.sleep(0.2)
  pytest.fail(f"nothing listens on {port} (the process's exit code: {proc.poll()})")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_while_the_processes_join_ends_the_wait_at_once(sig):
  """JAX waits for the other processes up to 5 minutes inside XLA, where launch.py's Python
  handlers never run: Ctrl-C, `timeout` or a scheduler's SIGTERM did nothing, and the process
  aborted with a stack trace 5 minutes on. Now it ends at once in a line."""
  port = free_port()
  proc = start_launch("configs/quickstart.py", f"--coordinator_address=localhost:{port}",
                      "--num_processes=2", "--process_id=0")  # process 1 never comes
  try:
    _wait_until_listening(port, proc, 120)  # process 0's service: it waits in the join
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=30)
  finally:
    proc.kill()
  assert proc.returncode == 128 + sig, out
  assert (f"stopped by {signal.Signals(sig).name} waiting for the other processes to join: "
          "nothing to save") in out


def _launch_two(recipe: str, own_flags: tuple[tuple[str, ...], ...] = ((), ()),
                homes: tuple[str, ...] = (), timeout: int = 120) -> list[tuple[int, str]]:
  """(exit code, output) of the two processes of one launch.py run, each with its own flags and
  its own HOME (a host of its own, for a data_dir under ~)."""
  port = free_port()
  procs = [start_launch(recipe, f"--coordinator_address=localhost:{port}", "--num_processes=2",
                        f"--process_id={i}", *own_flags[i],
                        env={"HOME": homes[i]} if homes else None) for i in range(2)]
  try:
    outs = [out for out, _ in communicate_all(procs, timeout)]
  finally:
    for p in procs:
      p.kill()
  return [(p.returncode, out) for p, out in zip(procs, outs)]


@pytest.mark.slow
@pytest.mark.parametrize("what", ["data", "eval_tasks", "weights", "weights_and_eval_tasks"])
def test_a_host_without_its_own_copy_of_a_file_stops_the_others_with_it(tmp_path, token_dir,
                                                                         what):
  """A host's own copy of the data, an eval_tasks file or the starting weights, missing on one
  host alone: that process said why and ended, while the others waited for it at the run's next
  collective, 5 minutes, then all aborted with JAX's traceback. Now every process stops at once,
  each with one line."""
  homes = (str(tmp_path / "host0"), str(tmp_path / "host1"))
  os.mkdir(homes[0])
  os.mkdir(homes[1])
  if what == "data":
    shutil.copytree(token_dir, os.path.join(homes[0], "data"))
    recipe, missing = write_config_file(tmp_path, "~/data"), "no token shards in data_dir="
    agreeing = "making or finding the data"
  elif what.startswith("weights"):  # a nanoGPT run's ckpt.pt on one host's own disk
    from test_nanogpt_ckpt import write_nanogpt_ckpt  # skips the case where torch is absent
    write_nanogpt_ckpt(os.path.join(homes[0], "ckpt.pt"), bias=True,
                       vocab_size=defaults.GPT2_VOCAB)
    tasks = {}  # with eval_tasks, launch reads the weights' vocabulary before it loads them
    agreeing = "loading the weights"
    if what == "weights_and_eval_tasks":
      for home in homes:
        with open(os.path.join(home, "task.txt"), "w") as f:
          f.write("A text the run scores at each evaluation.")
      tasks = {"eval_tasks": "text:~/task.txt"}
      agreeing = "checking the eval tasks and the closing sample"
    recipe = write_config_file(tmp_path, token_dir, init_from="nanogpt:~/ckpt.pt", **tasks)
    missing = f"nanogpt:{homes[1]}/ckpt.pt: no such file"
  else:
    with open(os.path.join(homes[0], "task.txt"), "w") as f:
      f.write("A text the run scores at each evaluation.")
    recipe = write_config_file(tmp_path, token_dir, eval_tasks="text:~/task.txt",
                               vocab_size=defaults.GPT2_VOCAB)
    missing = f"text:{homes[1]}/task.txt: no such file"
    agreeing = "checking the eval tasks and the closing sample"
  (code0, out0), (code1, out1) = _launch_two(recipe, homes=homes)
  assert (code0, code1) == (1, 1), (out0[-2000:], out1[-2000:])
  assert f"error: {missing}" in out1, out1[-2000:]
  assert f"error: {agreeing} failed on process(es) [1], whose error says why" in out0, out0[-2000:]


@pytest.mark.slow
def test_processes_started_with_different_configs_stop_before_any_step_it_decides(tmp_path,
                                                                                  token_dir):
  """A config that differs decided a step one process took alone (a resume from no
  checkpoints), and the other waited for it 5 minutes, then aborted, where the README says
  every process stops with one line naming the keys."""
  done = _launch_two(write_config_file(tmp_path, token_dir),
                     own_flags=((), ("--config.init_from=resume",)))
  for code, out in done:
    assert code == 1, out[-2000:]
    assert "error: the processes were started with different configs (init_from differ)" in out


def test_a_config_the_processes_differ_on_is_said_before_the_steps_it_decides(tmp_path,
                                                                              token_dir,
                                                                              monkeypatch):
  """The slow test above in one process, as its process 1 (init_from=resume where process 0
  starts a new run): launch.py compares the configs first, so every process stops on them
  (process 1 alone refused a resume from no checkpoints, and process 0 waited 5 minutes)."""
  import launch

  def another_process_s_init_from(values, error):
    if "init_from" in values:  # the config; the other checks agree
      raise UserError(error.replace("{keys}", "init_from"))

  monkeypatch.setattr(sharding, "check_same", another_process_s_init_from)
  with pytest.raises(UserError, match=r"^the processes were started with different configs "
                                      r"\(init_from differ\)"):
    launch.run(tiny_config(tmp_path, token_dir, init_from="resume"))
  assert not (tmp_path / "run").exists()


NOT_SHARED = "not every process sees the run.lock process 0 wrote there; out_dir must be one "


@pytest.mark.slow
def test_processes_whose_out_dir_is_each_host_s_own_disk_stop_before_anything(tmp_path,
                                                                            token_dir):
  """The same out_dir on each host's own disk: the run trained to its first save, where
  process 1 found no folder to save in and said so, and process 0 waited for it 5 minutes,
  then both aborted. Now both stop at the start, and process 0's disk is as it was."""
  homes = (str(tmp_path / "host0"), str(tmp_path / "host1"))
  os.mkdir(homes[0])
  os.mkdir(homes[1])
  done = _launch_two(write_config_file(tmp_path, token_dir, out_dir="~/run"), homes=homes,
                     timeout=240)  # process 1 looks for the lock 90 s, as NFS may need
  for (code, out), home in zip(done, homes):
    assert code == 1, out[-2000:]
    assert f"error: {home}/run: {NOT_SHARED}" in out, out[-2000:]
  assert os.listdir(homes[0]) == os.listdir(homes[1]) == []


def test_an_out_dir_another_process_does_not_see_is_refused_with_nothing_left(tmp_path,
                                                                             token_dir,
                                                                             monkeypatch):
  """The slow test above in one process, as its process 0 beside a process 1 whose own disk
  has no run.lock at out_dir: every process compares what it reads there, before any change."""
  import launch
  names = []

  def another_host_reads_none(values, error):
    if "run.lock" in values:  # the config's comparison agrees
      names.append(values["run.lock"])
      if values["run.lock"] != "":
        raise UserError(error.replace("{keys}", "run.lock"))

  monkeypatch.setattr(sharding, "check_same", another_host_reads_none)
  monkeypatch.setattr(jax, "process_count", lambda: 2)  # a run of one process checks nothing
  monkeypatch.setattr(multihost_utils, "process_allgather", lambda x: np.stack([x, x]))
  config = tiny_config(tmp_path, token_dir)
  with pytest.raises(UserError, match=f"^{config.out_dir}: {NOT_SHARED}"):
    launch.run(config)
  assert names and names[0].startswith(f"pid {os.getpid()} on ")
  assert not (tmp_path / "run").exists()


def test_auto_resume_where_another_process_sees_no_checkpoints_stops_every_one(tmp_path,
                                                                              token_dir,
                                                                              monkeypatch):
  """auto_resume where process 0 sees out_dir's checkpoints and another host's own disk has
  none: one would resume and the other start over; every process stops, naming the rule."""
  import launch
  config = tiny_config(tmp_path, token_dir)
  train.train(config)
  saved = sorted(os.listdir(tmp_path / "run" / "checkpoints"))

  def another_host_sees_none(values, error):
    if values.get("checkpoints"):
      raise UserError(error.replace("{keys}", "checkpoints"))

  monkeypatch.setattr(sharding, "check_same", another_host_sees_none)
  config.auto_resume = True
  with pytest.raises(UserError, match=re.escape(
      f"auto_resume: the processes see {tmp_path}/run/checkpoints apart (checkpoints on some, "
      f"none on others); {run_dir.SHARED}")):
    launch.run(config)
  assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == saved


def test_a_run_lock_that_shows_late_on_another_host_is_waited_for(tmp_path):
  """NFS may show a folder another host just made only when its attribute cache expires
  (60 s): a process that read run.lock once, found none and refused a run on a shared disk.
  It reads again until the lock shows, for as long as it is told."""
  rundir = run_dir.RunDir(str(tmp_path / "run"))

  def process_0_locks():
    os.mkdir(tmp_path / "run")
    (tmp_path / "run" / "run.lock").write_text("pid 7 on host0")

  assert rundir.holder() == ""
  threading.Timer(1.5, process_0_locks).start()
  assert rundir.holder(wait_s=60) == "pid 7 on host0"


def test_a_coordinator_port_in_use_is_one_line():
  """Process 0 whose port another program holds ended in JAX's traceback ("Failed to start
  RPC server"), saying neither the port nor what to do."""
  with socket.socket() as holder:  # IPv4, as on a host without IPv6; JAX binds both
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    proc = start_launch("configs/quickstart.py", f"--coordinator_address=localhost:{port}",
                        "--num_processes=2", "--process_id=0")
    try:
      out, _ = proc.communicate(timeout=120)
    finally:
      proc.kill()
  assert proc.returncode == 1, out
  assert f"error: process 0 cannot listen on port {port} for the others" in out
  assert "Traceback" not in out


def test_a_port_that_jax_picked_is_named_as_its_port():
  """Open MPI 4 without JAX_COORDINATOR_PORT: the port is JAX's, which the flags do not hold."""
  assert "process 0 cannot listen on its port for the others" in str(sharding._port_in_use(""))


def test_a_process_reads_its_own_devices_share_of_the_micro_batch(monkeypatch):
  """As a process of two with 2 devices each: it reads 2 x batch_size windows, not 4 x."""
  layout = sharding.BatchLayout(sharding.make_mesh(), accum_steps=2, batch_size=3, block_size=16)
  monkeypatch.setattr(jax, "local_device_count", lambda *a, **k: 2)
  monkeypatch.setattr(jax, "device_count", lambda *a, **k: 4)
  assert layout.local_batch == 6


def test_train_and_eval_batches_are_split_along_their_batch_axis():
  """What the step is compiled for (train_spec) is what train_batch gives."""
  layout = sharding.BatchLayout(sharding.make_mesh(), accum_steps=2, batch_size=4, block_size=16)
  P = jax.sharding.PartitionSpec
  batch = layout.train_batch(np.zeros((2, layout.local_batch, 17), np.uint16))
  assert batch.sharding.spec == P(None, sharding.DATA, None)
  assert batch.sharding == layout.train_spec.sharding
  eval_batch = layout.eval_batch(np.zeros((layout.local_batch, 17), np.uint16))
  assert eval_batch.sharding.spec == P(sharding.DATA, None)


# dp's step on 2 devices, one window each, at the dropout of argv[2]; each test adds its print.
# One layer: the step's compile is most of a test's time.
DATA_PARALLEL_ON_2 = """
import json, pathlib, sys
import jax, jax.numpy as jnp, numpy as np
sys.path.insert(0, "tests")
from conftest import build_state, pattern_windows, tiny_config
from jaxgpt import sharding, train_step
assert jax.device_count() == 2
config = tiny_config(pathlib.Path(sys.argv[1]), "", n_layer=1, batch_size=1,
                     gradient_accumulation_steps=1, dropout=float(sys.argv[2]), sharding="dp")
setup, state = build_state(config)
windows = jnp.asarray(pattern_windows(2, config.block_size)[None])
mapped = train_step.make_train_step(setup.model, setup.tx, dp_mesh=train_step.data_parallel(
    setup.step, sharding.make_mesh()))
fresh = lambda: jax.tree.map(np.asarray, state)  # each step donates the state it takes
measured = lambda metrics: [float(metrics["loss"]), float(metrics["grad_norm"])]
"""


def data_parallel_on_2(tmp_path, dropout: float, prints: str) -> list:
  """DATA_PARALLEL_ON_2 run on 2 simulated devices, then `prints`: what it printed, read. XLA
  leaves the CPU code unoptimised: a third less compile time, for the same losses."""
  r = run_python("-c", DATA_PARALLEL_ON_2 + prints, str(tmp_path), str(dropout),
                 XLA_FLAGS="--xla_force_host_platform_device_count=2 "
                           "--xla_backend_optimization_level=0")
  assert r.returncode == 0, r.stderr[-3000:]
  return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_data_parallel_step_averages_the_devices(tmp_path):
  """dp on 2 devices without dropout: the loss and gradient norm of one device's step on the
  whole batch."""
  on_2, on_1 = data_parallel_on_2(tmp_path, 0.0, """print(json.dumps([
    measured(mapped(fresh(), windows)[1]),
    measured(train_step.make_train_step(setup.model, setup.tx)(fresh(), windows)[1])]))""")
  np.testing.assert_allclose(on_2, on_1, rtol=1e-5)


def test_each_data_parallel_device_draws_its_own_dropout_masks(tmp_path):
  """dp on 2 devices, one window each, then the two windows swapped: under one mask on every
  device the mean loss would not move (the devices' rows dropped alike, correlated)."""
  loss, swapped = data_parallel_on_2(tmp_path, 0.3, """print(json.dumps(
    [measured(mapped(fresh(), w)[1])[0] for w in (windows, windows[:, ::-1])]))""")
  assert swapped != pytest.approx(loss, rel=1e-5)
