"""The benchmark: consistent figures, the CLI's JSON line, a PyTorch peer that is the same GPT."""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import types
import weakref

import flax
import jax
import numpy as np
import pytest
from conftest import (
  PYTHONPATH,
  ROOT,
  alive,
  build_state,
  pattern_windows,
  run_python,
  setup_of,
  start_python,
  tiny_config,
  tiny_model,
  wait_for,
)

from jaxgpt import defaults, run_dir, train_step
from jaxgpt.bench import collectives, decode, memory, recipes, save_overhead, throughput
from jaxgpt.errors import UserError
from jaxgpt.model import GPT, GPTConfig, count_params

TINY_FLAGS = ["--config.n_layer=2", "--config.n_head=2", "--config.n_embd=32",
              "--config.block_size=16", "--config.batch_size=4",
              "--config.gradient_accumulation_steps=2", "--config.vocab_size=96"]


def test_bench_figures_are_consistent(tmp_path):
  config = tiny_config(tmp_path, "")
  r = throughput.measure(config, iters=3, warmup=1, data_workers=0)
  assert r["tokens_per_iter"] == 2 * 4 * 16
  assert 0 < r["ms_per_iter_median"] and 0 < r["ms_per_iter_mean"]
  s_per_iter = r["ms_per_iter_median"] / 1e3
  assert r["tokens_per_sec"] == pytest.approx(r["tokens_per_iter"] / s_per_iter)
  assert r["compile_s"] > 0
  assert r["platform"] == "cpu" and r["peak_flops"] is None and r["mfu"] is None
  assert r["peak_memory_bytes"] is None  # CPU keeps no memory stats
  assert r["pipeline_ratio"] == pytest.approx(r["pipeline_tokens_per_sec"] / r["tokens_per_sec"])
  assert r["pipeline_ratio"] > 0
  assert r["loop_ms_per_iter_median"] > 0 and 0 <= r["data_wait_fraction"] <= 1
  assert r["data_wait_fraction"] == pytest.approx(r["data_wait_ms_per_iter"]
                                                / r["loop_ms_per_iter_mean"])
  assert r["n_params"] == count_params(setup_of(config).abstract_state.params)
  assert r["flops_per_token"] == 6 * r["n_params"] + 12 * 2 * 2 * 16 * 16
  assert "peer" not in r
  assert r["backward_residual_bytes"] > 0


class _Clock:
  """time.perf_counter for a device whose work is done when its results are waited for."""

  def __init__(self):
    self.now = 0.0

  def perf_counter(self) -> float:
    return self.now

  def pending(self, seconds: float) -> _Pending:
    return _Pending(self, seconds)


class _Pending:
  """A result whose device work takes `seconds` of the clock, spent where it is waited for."""

  def __init__(self, clock: _Clock, seconds: float):
    self.clock, self.seconds = clock, seconds

  def block_until_ready(self) -> _Pending:
    self.clock.now += self.seconds
    self.seconds = 0.0
    return self


def test_the_timed_steps_are_each_step_s_own_time_after_the_warmup(monkeypatch):
  """ms/iter, tokens/s and MFU are read from these: a warmup step's one-off costs (autotuning,
  the first run's allocations), a step's time counted before its device work ends, or the
  steps before it counted again would each move them."""
  clock, calls = _Clock(), []
  monkeypatch.setattr(throughput, "time", clock)

  def step(state, batch):  # two warmup steps of 1 s each, then 0.1 s a step
    calls.append(state)
    return state + 1, clock.pending(1.0 if len(calls) <= 2 else 0.1)

  state, times = throughput.time_step(step, 0, None, iters=3, warmup=2)
  assert state == 5 and times == pytest.approx([0.1, 0.1, 0.1])


def test_a_profile_traces_the_train_step_into_a_folder_of_its_own(tmp_path):
  r = throughput.measure(tiny_config(tmp_path, ""), iters=1, warmup=1, data_workers=0,
                         profile_dir=str(tmp_path / "profile"))
  assert os.path.dirname(r["profile"]) == str(tmp_path / "profile" / "plugins" / "profile")
  with gzip.open(os.path.join(r["profile"], "perfetto_trace.json.gz")) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  steps = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                 if e.get("ph") == "X" and e["name"] == "PjitFunction(jit(train_step))")
  calls, end = 0, -math.inf
  for start, stop in steps:  # a call may be recorded twice, one event inside the other
    if start >= end:
      calls, end = calls + 1, stop
  assert calls == throughput.PROFILE_ITERS


def test_memory_report_orders_the_levers(tmp_path):
  config = tiny_config(tmp_path, "")
  config.loss_chunk_size = 16
  kept = {(row["remat"], row["loss_chunk_size"]): row["residual_bytes"]
          for row in memory.memory_report(GPTConfig.from_config(config), config.batch_size)}
  assert set(kept) == {(r, c) for r in ("none", "dots", "full") for c in (16, 0)}
  for chunk in (16, 0):
    assert kept["full", chunk] < kept["dots", chunk] < kept["none", chunk]
  for remat in ("none", "dots", "full"):
    assert kept[remat, 16] < kept[remat, 0]  # no whole logits kept


def test_bench_rejects_a_run_without_timed_steps(tmp_path):
  with pytest.raises(UserError, match="--iters=0"):
    throughput.measure(tiny_config(tmp_path, ""), iters=0, warmup=1, data_workers=0)


@pytest.mark.slow
def test_cli_with_torch_peer_prints_and_appends_one_json_line(tmp_path):
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  json_out = tmp_path / "bench.jsonl"
  out = run_python("-m", "jaxgpt.bench", "--config=configs/quickstart.py", *TINY_FLAGS,
                   "--iters=2", "--warmup=1", "--data_workers=1", "--peak_flops=1e12",
                   "--peer=torch", f"--out={json_out}", "--config.dataset=python_docs")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "--config.dataset: not read; the bench times the step and the pipeline on a " in (
      out.stderr)  # a synthetic shard's speed is not the dataset's
  r = json.loads(out.stdout.strip().splitlines()[-1])
  assert json.loads(json_out.read_text()) == r
  assert r["config"] == "configs/quickstart.py" and r["overrides"]["n_embd"] == 32
  assert r["data_workers"] == 1 and r["pipeline_tokens_per_sec"] > 0
  assert r["mfu"] == pytest.approx(r["tokens_per_sec"] * r["flops_per_token"] / 1e12)
  p = r["peer"]
  assert p["n_params"] == r["n_params_total"]
  assert not p["compile"] and not p["autocast_bf16"]  # the defaults on CPU
  assert p["ms_per_iter_median"] > 0 and math.isfinite(p["last_loss"])
  assert r["jax_over_peer"] == pytest.approx(r["tokens_per_sec"] / p["tokens_per_sec"])
  assert "jax / torch tokens/s" in out.stdout


@pytest.mark.parametrize("key,value", [("pos_emb", "rope"), ("optimizer", "muon")])
def test_the_torch_peer_refuses_a_model_it_does_not_build(tmp_path, key, value):
  config = tiny_config(tmp_path, str(tmp_path), **{key: value})
  with pytest.raises(UserError, match=f"departs from it \\({key}={value}\\)"):
    throughput._time_peer(config, iters=1, warmup=1, torch_compile=False)


def test_the_torch_peer_on_another_device_than_jax_is_refused_before_its_timing(
    tmp_path, monkeypatch, torch_peer):
  """A GPU JAX beside the CPU torch wheel would time hours of CPU training, then refuse."""
  monkeypatch.setattr(torch_peer, "peer_device", lambda: "cuda")
  monkeypatch.setattr(torch_peer, "measure", lambda *a, **k: pytest.fail("the peer was timed"))
  with pytest.raises(UserError, match="--peer=torch: torch runs on 'cuda' but JAX on 'cpu'"):
    throughput._time_peer(tiny_config(tmp_path, str(tmp_path)), iters=1, warmup=1,
                          torch_compile=False)


def test_the_torch_peer_says_why_jax_would_not_start(tmp_path, monkeypatch, torch_peer):
  """An empty platform is JAX's start failing (a broken CUDA plugin, say), not a device that
  differs from torch's, which would advise builds for the same device."""
  from jaxgpt.bench import gpu_report

  monkeypatch.setattr(gpu_report, "device", lambda: ("", "", "ImportError: no libcuda; jax 0.x"))
  monkeypatch.setattr(torch_peer, "peer_device", lambda: "cuda")
  with pytest.raises(UserError, match=r"^--peer=torch: JAX would not start \(ImportError: no "
                                      r"libcuda\)$"):
    throughput._time_peer(tiny_config(tmp_path, str(tmp_path)), iters=1, warmup=1,
                          torch_compile=False)


def test_the_torch_peer_runs_before_jax_s_client_takes_the_gpu(tmp_path, monkeypatch,
                                                                torch_peer):
  """JAX's GPU client takes 75% of the card when it starts: the platform check asks another
  process, so the peer has the whole card."""
  monkeypatch.setattr(jax, "devices", lambda *a: pytest.fail("JAX started before the peer"))
  monkeypatch.setattr(torch_peer, "measure", lambda *a, **k: {"timed": True})
  assert throughput._time_peer(tiny_config(tmp_path, str(tmp_path)), iters=1, warmup=1,
                               torch_compile=False) == {"timed": True}


def test_the_torch_peer_frees_its_model_before_giving_the_cache_back(tmp_path, monkeypatch,
                                                                     torch, torch_peer):
  """torch.cuda.empty_cache() returns only free blocks: the model and AdamW's state must be
  gone by then, or ~12 bytes a parameter stay torch's while JAX's step runs."""
  build, alive = torch_peer.build_model, []

  def build_watched(*args):
    model = build(*args)
    alive.append(weakref.ref(next(model.parameters())))
    return model

  monkeypatch.setattr(torch_peer, "build_model", build_watched)
  monkeypatch.setattr(torch.compiler, "reset", lambda: alive.append(alive[0]() is not None))
  torch_peer.measure(tiny_config(tmp_path, str(tmp_path), batch_size=2), iters=1, warmup=1,
                     compile=False)
  assert alive[1:] == [False]


# The PyTorch peer is the same function as jaxgpt's GPT.


@pytest.fixture
def torch():
  pytest.importorskip("transformers")
  return pytest.importorskip("torch")


@pytest.fixture
def torch_peer(torch):
  from jaxgpt.bench import torch_peer

  return torch_peer


def load_jax_params(torch_model, params, *, bias: bool) -> None:
  """Copies jaxgpt params into the peer; bias-free projections are nn.Linear (out, in)."""
  import torch

  state = {}
  for key, value in flax.traverse_util.flatten_dict(params, sep=".").items():
    name = "transformer." + ("h." + key[2:] if key.startswith("h_") else key)
    name = name.replace(".scale", ".weight").replace(".embedding", ".weight")
    if name.endswith(".kernel"):
      name = name.replace(".kernel", ".weight")
      value = value if bias else value.T
    state[name] = torch.tensor(np.asarray(value))
  missing, unexpected = torch_model.load_state_dict(state, strict=False)
  assert missing == ["lm_head.weight"] and unexpected == []  # the head is tied to wte


@pytest.mark.parametrize("overrides", [{"bias": False}, {"bias": True},
                                       {"tie_embeddings": False}], ids=str)
def test_peer_has_the_same_parameters_and_loss_at_init(tmp_path, torch, torch_peer, overrides):
  config = tiny_config(tmp_path, "", **overrides)
  setup, state = build_state(config)
  peer = torch_peer.build_model(setup.model.config, config.seed, "cpu")
  assert torch_peer.count_params(peer) == count_params(state.params, non_embedding=False)
  tokens = pattern_windows(8, config.block_size).astype(np.int64)
  jax_loss = float(train_step.make_eval_step(setup.model)(state.params, tokens))
  torch_loss = torch_peer.loss(peer, torch.tensor(tokens))
  assert jax_loss == pytest.approx(math.log(config.vocab_size), abs=0.05)
  assert torch_loss == pytest.approx(jax_loss, abs=0.02)


@pytest.mark.parametrize("gelu_approximate", [False, True])
def test_peer_computes_the_same_logits_from_the_same_weights(tmp_path, torch, torch_peer,
                                                            gelu_approximate):
  config = tiny_config(tmp_path, "", gelu_approximate=gelu_approximate)
  setup, state = build_state(config)
  # Weights 10x their init scale put the GELU inputs near 1, where its two forms differ.
  params = jax.tree.map(lambda p: 10 * p, state.params)
  peer = torch_peer.build_model(setup.model.config, config.seed, "cpu").eval()
  load_jax_params(peer, params, bias=False)
  tokens = pattern_windows(4, config.block_size).astype(np.int64)[:, :-1]
  jax_logits = np.asarray(setup.model.apply({"params": params}, tokens))
  with torch.no_grad():
    torch_logits = peer(input_ids=torch.tensor(tokens)).logits.numpy()
  np.testing.assert_allclose(torch_logits, jax_logits, atol=2e-4, rtol=1e-4)


def test_peer_train_step_follows_jaxgpt_step(tmp_path, torch, torch_peer):
  # Constant lr: the peer times steps, it does not follow the schedule.
  config = tiny_config(tmp_path, "", decay_lr=False, learning_rate=1e-2, grad_clip=0.5,
                       weight_decay=2.0)
  setup, state = build_state(config)
  peer = torch_peer.build_model(setup.model.config, config.seed, "cpu")
  load_jax_params(peer, state.params, bias=False)
  tokens_ABT1 = pattern_windows(8, config.block_size, seed=3).reshape(2, 4, -1).astype(np.int64)
  jax_step = train_step.make_train_step(setup.model, setup.tx)
  torch_step = torch_peer.make_train_step(peer, setup.step.optim, config.dtype, "cpu", compile=False)
  for _ in range(5):
    state, _ = jax_step(state, tokens_ABT1.astype(np.uint16))
    torch_step(torch.tensor(tokens_ABT1))
  eval_tokens = pattern_windows(8, config.block_size, seed=4).astype(np.int64)
  jax_loss = float(train_step.make_eval_step(setup.model)(state.params, eval_tokens))
  torch_loss = torch_peer.loss(peer, torch.tensor(eval_tokens))
  assert jax_loss < math.log(config.vocab_size) - 0.3  # it learned
  assert torch_loss == pytest.approx(jax_loss, abs=1e-4)


HLO = """\
%chunk.1 (q: (s32[], f32[4])) -> (s32[], f32[4]) {
  %arc = f32[4]{0} all-reduce(f32[4]{0} %y), to_apply=%add
}

%body.1 (p: (s32[], f32[8,4])) -> (s32[], f32[8,4]) {
  %ag = f32[8,4]{1,0} all-gather(f32[1,4]{1,0} %x), dimensions={0}
  %w2 = (s32[], f32[4]) while(%u), condition=%cond.2, body=%chunk.1, backend_config={"known_trip_count":{"n":"5"}}
}

%newton.1 (s: (s32[], f32[4,4])) -> (s32[], f32[4,4]) {
  %m = f32[4,4]{1,0} dot(f32[4,4]{1,0} %s, f32[4,4]{1,0} %s)
}

%branch.1 (r: f32[8,4]) -> f32[8,4] {
  %a2a = f32[8,4]{1,0} all-to-all(f32[8,4]{1,0} %r), dimensions={0}
}

ENTRY %main.2 (a: f32[8,4]) -> f32[8,4] {
  %w = (s32[], f32[8,4]) while(%t), condition=%cond.1, body=%body.1, backend_config={"known_trip_count":{"n":"3"}}
  %ar = (f32[8,4]{1,0}, bf16[2]{0}) all-reduce(%a, %b), to_apply=%add
  %c = f32[8,4]{1,0} conditional(%p, %a, %a), branch_computations={%empty.1, %branch.1}
  %ns = (s32[], f32[4,4]) while(%v), condition=%cond.3, body=%newton.1
}
"""


def test_collectives_count_each_loop_body_once_per_trip_nested_loops_multiplied():
  """The micro-batch loop runs 3 times and, inside each, the loss's chunk loop 5 times; a loop
  XLA gives no trip count (Muon's Newton-Schulz) holds no collective, and counts for nothing."""
  sent = collectives.collectives(HLO, n_devices=8)
  assert sent["all-gather"] == pytest.approx(3 * 7 / 8 * 8 * 4 * 4)
  assert sent["all-reduce"] == pytest.approx(2 * 7 / 8 * (8 * 4 * 4 + 2 * 2 + 3 * 5 * 4 * 4))
  assert sent["all-to-all"] == pytest.approx(7 / 8 * 8 * 4 * 4)  # a branch, as if taken
  with pytest.raises(ValueError, match="collectives in branch.1, which no call"):
    collectives.collectives(HLO.replace("%empty.1, %branch.1", "%empty.1"), 8)
  with pytest.raises(UserError, match=r"^collectives in a while loop XLA gives no trip count "
                                      r"\(jit\(step\)/loss/while; "):  # the loop, named
    collectives.collectives(HLO.replace(', backend_config={"known_trip_count":{"n":"5"}}',
                                        ', metadata={op_name="jit(step)/loss/while"}'), 8)


@pytest.mark.slow
def test_collectives_of_a_muon_run_count_dp_and_say_fsdp_s_loops_are_not_counted():
  """Muon's Newton-Schulz loop has no trip count in XLA's HLO: under dp it holds no collective
  (counted as before), under fsdp it does (one line says so), and no traceback either way."""
  r = run_python("-m", "jaxgpt.bench", "--config=configs/quickstart.py", "--collectives",
                 "--config.optimizer=muon", "--config.n_layer=1", "--config.n_embd=32",
                 "--config.n_head=2", "--config.block_size=32", "--config.batch_size=2",
                 XLA_FLAGS="--xla_force_host_platform_device_count=2")
  assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
  lines = r.stdout.splitlines()
  assert lines[0].startswith("dp on 2 devices, 1 x 2 per device:")
  assert lines[1].startswith("fsdp: collectives in a while loop XLA gives no trip count (")
  assert json.loads(lines[2])["sent_bytes_per_iter"]["all-reduce"] > 0


def test_collectives_read_a_gpu_async_start_by_its_results():
  """jaxlib 0.10 types an all-reduce's start as its results, 0.11 as ((operands), results), as
  both type a reduce-scatter's: each array counts once."""
  hlo = """\
ENTRY %main.3 (a: f32[1,4]) -> f32[8,4] {
  %ags = ((f32[1,4]{1,0}), (f32[8,4]{1,0})) all-gather-start(f32[1,4]{1,0} %a), dimensions={0}
  %ars = (f32[8,4]{1,0}, bf16[2]{0}) all-reduce-start(%b, %c), to_apply=%add
  %rss = ((bf16[8,4]{1,0}), bf16[1,4]{1,0}) reduce-scatter-start(%d), dimensions={0}
  %cps = (f32[1,4]{1,0}, f32[1,4]{1,0}) collective-permute-start(%e), source_target_pairs={{0,1}}
}
"""
  expected = {"all-gather": 7 / 8 * 8 * 4 * 4, "all-reduce": 2 * 7 / 8 * (8 * 4 * 4 + 2 * 2),
              "reduce-scatter": 7 * 4 * 2, "collective-permute": 4 * 4}
  assert collectives.collectives(hlo, n_devices=8) == pytest.approx(expected)
  jaxlib_0_11 = hlo.replace("(f32[8,4]{1,0}, bf16[2]{0}) all-reduce-start",
                            "((f32[8,4]{1,0}, bf16[2]{0}), (f32[8,4]{1,0}, bf16[2]{0})) "
                            "all-reduce-start")
  assert collectives.collectives(jaxlib_0_11, n_devices=8) == pytest.approx(expected)


def test_checkpoint_overhead_reports_both_step_times(tmp_path):
  report = save_overhead.checkpoint_overhead(tiny_config(tmp_path, ""), iters=3, warmup=1)
  assert report["ms_per_iter_alone"] > 0
  assert 0 < report["save_blocked_ms"] <= 1000 * report["save_total_s"]
  assert report["state_bytes"] > 0


class _AsyncSaves:
  """Checkpoints saved as Orbax saves them, on `clock`: save() returns after copying the state
  (`copy` s), which is on disk `write` s later."""

  def __init__(self, clock: _Clock, copy: float, write: float):
    self.clock, self.copy, self.write, self.on_disk = clock, copy, write, 0.0
    self.manager = self

  def save(self, step: int, state, data, metadata) -> None:
    self.clock.now += self.copy
    self.on_disk = self.clock.now + self.write

  def is_saving_in_progress(self) -> bool:
    return self.clock.now < self.on_disk

  def wait(self) -> None:
    self.clock.now = max(self.clock.now, self.on_disk)

  def close(self) -> None:
    pass


def test_a_save_blocks_the_loop_until_it_returns_and_steps_go_on_while_it_writes(monkeypatch,
                                                                                  tmp_path):
  """--checkpoint's line: 'save blocked the loop' is the copy before save() returns, not the
  time until the save is on disk, and the steps timed during the save are those it overlaps."""
  clock = _Clock()
  monkeypatch.setattr(throughput, "time", clock)
  monkeypatch.setattr(save_overhead, "time", clock)
  step = lambda state, batch: (state, clock.pending(0.01))
  monkeypatch.setattr(throughput, "ready_step", lambda step_config, seed: (
      None, np.zeros(4, np.float32), None, step, None))
  monkeypatch.setattr(run_dir.RunDir, "checkpoints",
                      lambda self, keep: _AsyncSaves(clock, copy=0.05, write=0.195))
  report = save_overhead.checkpoint_overhead(tiny_config(tmp_path, ""), iters=50, warmup=1)
  assert report["save_blocked_ms"] == pytest.approx(50)
  assert report["save_total_s"] == pytest.approx(0.25)
  assert report["steps_during_save"] == 20
  assert report["ms_per_iter_during_save"] == report["ms_per_iter_alone"] == pytest.approx(10)


@pytest.mark.slow
def test_decode_rows_time_both_methods_per_batch_size(tmp_path):
  config = tiny_config(tmp_path, "")
  rows = decode.decode_rows(GPT(GPTConfig.from_config(config)), [1, 2], cache_tokens=6,
                            recompute_tokens=3)
  assert [(r["batch"], r["method"], r["new_tokens"]) for r in rows] == [
      (1, "cache", 6), (1, "recompute", 3), (2, "cache", 6), (2, "recompute", 3)]
  assert all(r["tokens_per_sec"] > 0 and r["compile_s"] > 0 for r in rows)
  assert "batch 2: cache is" in decode.table(rows)


def test_decode_s_tokens_per_second_are_every_row_s_tokens_over_a_run_after_the_first(
    monkeypatch):
  """The first run of a compiled program pays one-off costs, and a batch of 4 rows makes 4
  tokens a step: tokens/s is batch x new tokens over the second run alone."""
  clock = _Clock()
  monkeypatch.setattr(decode, "time", clock)

  def program(seconds):  # compiled in 5 s, first run 1 s, then `seconds` a run
    runs = []

    def run(*args):
      runs.append(args)
      return clock.pending(1.0 if len(runs) == 1 else seconds)

    def compile():
      clock.now += 5.0
      return run

    return types.SimpleNamespace(lower=lambda *a, **k: types.SimpleNamespace(compile=compile))

  monkeypatch.setattr(decode, "_programs", lambda model, params, batch, new_tokens: [
      ("cache", new_tokens["cache"], program(0.5), ((model, params), {})),
      ("recompute", new_tokens["recompute"], program(2.0), ((model, params), {}))])
  monkeypatch.setattr(decode, "init_params", lambda model, rng: {})
  rows = decode.decode_rows(GPT(tiny_model()), [4], cache_tokens=100, recompute_tokens=10)
  assert [(r["method"], r["compile_s"], r["run_s"], r["tokens_per_sec"]) for r in rows] == [
      ("cache", 5.0, 0.5, 4 * 100 / 0.5), ("recompute", 5.0, 2.0, 4 * 10 / 2.0)]
  assert decode.table(rows).splitlines()[-1] == "batch 4: cache is 40.0x recompute (tokens/s)"


def test_cli_modes_are_exclusive():
  out = run_python("-m", "jaxgpt.bench", "--config=configs/quickstart.py", "--memory",
                   "--decode")
  assert out.returncode != 0 and "pick one of" in out.stderr
  out = run_python("-m", "jaxgpt.bench", "--config=configs/quickstart.py", "--memory",
                   "--profile=prof")
  assert out.returncode == 1 and "error: --profile: not read by --memory" in out.stderr
  out = run_python("-m", "jaxgpt.bench", "--config=configs/quickstart.py",
                   "--config.data_workers=0")  # read by training; the bench had ignored it
  assert out.returncode == 1 and out.stderr.splitlines() == [(
      "error: --config.data_workers: the pipeline runs take the bench's own --data_workers "
      "(default 2); give --data_workers=0")]


@pytest.mark.parametrize("flag,error", [
    ("--variants=nanogpt,bogus", "error: unknown variant(s) bogus"),
    ("--compare_data=", "error: --compare_data=: names no file or folder"),
    ("--compare_data=nosuchdataset", (
        "error: --compare_data=nosuchdataset: no token shards in data/nosuchdataset (make them "
        "with python -m jaxgpt.prepare files --input='PATH/*.parquet' --out=data/nosuchdataset), "
        "or give a directory of them\n"))])
def test_a_refused_comparison_leaves_no_folder_of_its_own(tmp_path, flag, error):
  out = run_python("-m", "jaxgpt.bench", "--compare_recipes", flag, f"--out={tmp_path}/cmp")
  assert out.returncode == 1 and error in out.stderr, out.stderr
  assert len(out.stderr.splitlines()) == 1, out.stderr  # one line, naming no flag bench lacks
  assert not (tmp_path / "cmp").exists()
  (tmp_path / "mine").mkdir()  # the user's, kept
  out = run_python("-m", "jaxgpt.bench", "--compare_recipes", flag, f"--out={tmp_path}/mine")
  assert out.returncode == 1 and (tmp_path / "mine").is_dir()


def test_modes_that_run_the_clone_s_files_say_so_where_it_is_not_there(monkeypatch, tmp_path):
  """A `pip install .` (no -e) has no launch.py, configs/ or tests/: --compare_recipes failed
  after preparing its data, --gpu_report at its first row; each now says it needs a clone."""
  import types

  from jaxgpt import defaults
  from jaxgpt.bench import __main__ as bench

  site = tmp_path / "site-packages"
  monkeypatch.setattr(defaults, "CHECKOUT", str(site))
  refusals = [(bench._print_compare_recipes, "launch.py"),
              (bench._print_gpu_report, "configs/fineweb_40m.py"),
              (bench._print_gpu_report, "tests/conftest.py")]
  for mode, missing in refusals:
    with pytest.raises(UserError) as refused:
      mode(types.SimpleNamespace(gpu_tests=True))
    assert str(refused.value) == (
        f"--{mode.__name__.removeprefix('_print_')} needs {missing} from a jaxgpt clone, and "
        f"{site}/{missing} is missing: run it in a clone, installed with pip install -e .")
    if missing.startswith("configs/"):  # the recipes there, and the tests not
      (site / "configs").mkdir(parents=True)
      for name in ("fineweb_40m", "gpt2_124m"):
        (site / "configs" / f"{name}.py").write_text("")


def test_a_comparison_writes_no_recipe_over_a_file_of_the_users(tmp_path):
  from jaxgpt.bench import recipes

  (tmp_path / "nanogpt.recipe.py").write_text("my notes")
  config = recipes.base_config("python_docs", str(tmp_path), 2)
  with pytest.raises(UserError, match="nanogpt.recipe.py exists and is not a recipe this "):
    recipes.train_variant(recipes.variant_config(config, "nanogpt", {}, 1.0))
  assert (tmp_path / "nanogpt.recipe.py").read_text() == "my notes"


def test_a_comparison_writes_no_table_over_files_of_the_users(tmp_path, monkeypatch):
  """--out=. or results/ replaced a table.md, rows.jsonl or curves.png without a word, after
  the training; a comparison's own are written again."""
  from jaxgpt.bench import recipes

  monkeypatch.chdir(tmp_path)  # compare() makes data/python_docs in the working directory

  rows = [{"variant": "nanogpt", "learning_rate": 1e-3, "muon_learning_rate": None,
           "final_val_loss": 4.5, "tokens_to_target": 1e6, "tokens_to_target_ratio": 1.0,
           "ms_per_iter": 10.0, "step_time_ratio": 1.0}]
  recipes.write(rows, str(tmp_path))
  (tmp_path / "curves.png").write_bytes(b"\x89PNG")
  recipes.check_outputs(str(tmp_path))  # its own: accepted
  for name, text in (("table.md", "my notes"), ("rows.jsonl", "keep\n")):
    mine = tmp_path / name
    kept = mine.read_text()
    mine.write_text(text)
    with pytest.raises(UserError, match=rf"^{mine} exists and is not a comparison's this "):
      recipes.compare(recipes.base_config("python_docs", str(tmp_path), 2), ["nanogpt"], [1.0])
    mine.write_text(kept)
  (tmp_path / "table.md").unlink()
  with pytest.raises(UserError, match="curves.png exists and is not a comparison's"):
    recipes.check_outputs(str(tmp_path))
  assert not (tmp_path / "nanogpt").exists()  # refused before any training


def test_a_sigterm_to_a_comparison_stops_the_run_it_trains(tmp_path):
  """`timeout` or a scheduler signals the benchmark alone: its training run must stop too."""
  fake_launch = tmp_path / "launch.py"
  fake_launch.write_text(
      "import pathlib, signal, sys, time\n"
      f"folder = pathlib.Path({str(tmp_path)!r})\n"
      "signal.signal(signal.SIGTERM, lambda *_: ((folder / 'stopped').touch(), sys.exit(0)))\n"
      "(folder / 'started').touch()\n"
      "time.sleep(30)\n")
  # In the repository (the clone's jaxgpt, whatever the working directory), as the CLI runs.
  bench = start_python(
      "-c", "from jaxgpt.bench import recipes\n"
            f"recipes.LAUNCH = {str(fake_launch)!r}\n"
            f"config = recipes.base_config('python_docs', {str(tmp_path / 'cmp')!r}, 2)\n"
            "recipes.train_variant(recipes.variant_config(config, 'nanogpt', {}, 1.0))\n")
  try:  # not before the run is up: a SIGTERM then would test the case of the test below
    wait_for(lambda: (tmp_path / "started").exists() or bench.poll() is not None, 120,
             "the comparison to start its run")
    assert bench.poll() is None, bench.communicate()[0]
    bench.send_signal(signal.SIGTERM)
    output = bench.communicate(timeout=60)[0]
    assert bench.returncode == 1, output  # the comparison stops with its run
    assert (tmp_path / "stopped").exists()
  finally:
    bench.kill()


def test_a_comparison_evaluates_at_most_the_val_batches_its_data_holds(tmp_path, token_dir,
                                                                        monkeypatch):
  """python_docs, the default data, holds 4 of the comparison's val batches, and its runs
  asked for 10: each warned that it scored every window 2.4 times, which the user of
  --compare_recipes could not change."""
  trained = []

  def run_variant(config):
    trained.append(config.eval_iters)
    raise UserError("stop here")

  monkeypatch.setattr(recipes, "run_variant", run_variant)
  base = recipes.base_config(token_dir, str(tmp_path / "cmp"), 4)
  base.update(block_size=16, vocab_size=96, batch_size=8)
  assert base.eval_iters == 10  # the val split's 999 tokens are 62 windows of 16 + 1: 7 batches
  with pytest.raises(UserError, match="stop here"):
    recipes.compare(base, ["nanogpt"], [1.0])
  assert trained == [7]


def test_a_comparison_says_that_it_removed_a_run_s_checkpoints(tmp_path, monkeypatch, caplog):
  """Each run ends on `done: ... Next: python -m jaxgpt.sample --out_dir=...`; the comparison
  then removes its checkpoints, so the log says so, or the command it printed looks usable."""
  config = recipes.variant_config(recipes.base_config("python_docs", str(tmp_path / "cmp"), 4),
                                  "nanogpt", {}, 1.0)

  def train_variant(config):
    os.makedirs(os.path.join(config.out_dir, "checkpoints", "4"))
    with open(os.path.join(config.out_dir, "metrics.jsonl"), "w") as f:
      f.write(json.dumps({"event": "eval", "iter": 4, "tokens": 8192, "train_loss": 5.0,
                          "val_loss": 5.5, "lr": 1e-3}) + "\n")

  monkeypatch.setattr(recipes, "train_variant", train_variant)
  caplog.set_level("INFO")
  recipes.run_variant(config)
  assert not os.path.exists(os.path.join(config.out_dir, "checkpoints"))
  assert f"{config.out_dir}: its checkpoints removed" in caplog.text


def _records(*val_losses: float) -> dict:
  return {"train": [], "tasks": [],
          "eval": [{"iter": i, "tokens": 1000 * i, "val_loss": v} for i, v in
                   enumerate(val_losses)]}


def test_a_comparison_scores_every_variant_against_the_baseline_s_final_val_loss(
    tmp_path, monkeypatch):
  """The baseline is the reference wherever --variants names it; its final val loss (not its
  best) is the target; ratios are against its tokens and its step time; each lr scale
  multiplies every learning rate of a variant."""
  trained = {}

  def run_variant(config):
    trained[os.path.basename(config.out_dir)] = config
    name = os.path.basename(config.out_dir).split("_lr_x")[0]
    return {"nanogpt": _records(5.0, 3.0, 4.0), "modern": _records(5.0, 4.5, 3.5)}[name]

  step_ms = iter([30.0, 60.0, 20.0, 40.0])
  monkeypatch.setattr(recipes, "run_variant", run_variant)
  monkeypatch.setattr(recipes, "step_ms", lambda step: next(step_ms))
  monkeypatch.setattr(recipes, "_val_batches", lambda *a: 4)
  monkeypatch.setattr(recipes.report, "plot", lambda *a: None)
  base = recipes.base_config("python_docs", str(tmp_path), 8)
  rows = recipes.compare(base, ["modern", "nanogpt"], [1.0, 2.0])
  assert [(r["variant"], r["target_val_loss"], r["tokens_to_target"],
           r["tokens_to_target_ratio"], r["step_time_ratio"]) for r in rows] == [
      ("modern", 4.0, 1500.0, 0.75, 1.5), ("modern_lr_x2", 4.0, 1500.0, 0.75, 3.0),
      ("nanogpt", 4.0, 500.0, 0.25, 1.0), ("nanogpt_lr_x2", 4.0, 500.0, 0.25, 2.0)]
  modern, doubled = trained["modern"], trained["modern_lr_x2"]
  for key in ("learning_rate", "min_lr", "muon_learning_rate"):
    assert doubled[key] == pytest.approx(2 * modern[key])


def test_a_comparison_run_stopped_before_max_iters_is_not_taken_as_finished(tmp_path,
                                                                           monkeypatch):
  config = recipes.variant_config(recipes.base_config("python_docs", str(tmp_path / "cmp"), 4),
                                  "nanogpt", {}, 1.0)

  def stopped_at_2(config):  # as a SIGTERM at iteration 2 leaves the run
    os.makedirs(config.out_dir)
    with open(os.path.join(config.out_dir, "metrics.jsonl"), "w") as f:
      f.writelines(json.dumps({"event": "eval", **r}) + "\n"
                   for r in _records(5.0, 4.5, 4.0)["eval"])

  monkeypatch.setattr(recipes, "train_variant", stopped_at_2)
  with pytest.raises(UserError, match=r"cmp/nanogpt stopped before max_iters=4; the comparison "):
    recipes.run_variant(config)


def test_a_file_as_compare_data_is_refused_as_a_file(tmp_path, monkeypatch):
  """`--compare_data=notes.txt` was taken for a dataset's name, data/notes.txt, and refused in
  three lines that pointed at --config.data_dir, a flag the benchmark does not take."""
  monkeypatch.chdir(tmp_path)
  (tmp_path / "notes.txt").write_text("text")
  with pytest.raises(UserError, match=r"^--compare_data=notes.txt: a file, not a directory of "
                                      r"token shards"):
    recipes.base_config("notes.txt", str(tmp_path / "cmp"), 4)


def test_a_variant_the_base_cannot_take_is_refused_before_any_trains(tmp_path, monkeypatch):
  """RoPE on heads of 9: said before the baseline trains for nothing."""
  monkeypatch.chdir(tmp_path)  # compare() makes data/python_docs in the working directory
  config = recipes.base_config("python_docs", str(tmp_path / "cmp"), 4)
  config.update(n_embd=36, n_head=4)
  with pytest.raises(UserError, match=r"^pos_emb=rope: config.pos_emb='rope': rope needs an "
                                      r"even head size"):
    recipes.compare(config, ["nanogpt", "pos_emb=rope"], [1.0])
  assert not (tmp_path / "cmp").exists()


def test_a_sigterm_as_the_training_run_starts_is_passed_on(tmp_path, monkeypatch):
  """One that comes before the run is watched (here, as Popen returns) stops it too."""
  fake_launch = tmp_path / "launch.py"
  fake_launch.write_text("import time\ntime.sleep(30)\n")
  real_popen = subprocess.Popen

  def popen_then_sigterm(*args, **kwargs):
    run = real_popen(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGTERM)
    return run

  monkeypatch.setattr(recipes, "LAUNCH", str(fake_launch))
  monkeypatch.setattr(recipes.subprocess, "Popen", popen_then_sigterm)
  config = recipes.base_config("python_docs", str(tmp_path / "cmp"), 2)
  previous = signal.signal(signal.SIGTERM, lambda *_: None)  # what a missed one would reach
  try:  # missed, the run trains on to its end (30 s), and ends the comparison with no error
    with pytest.raises(UserError, match="stopped by SIGTERM while training"):
      recipes.train_variant(recipes.variant_config(config, "nanogpt", {}, 1.0))
  finally:
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.slow
def test_a_stopped_comparison_run_again_goes_on_from_the_stopped_run(tmp_path, token_dir):
  """The run's stop said to continue "with the same command plus --config.init_from=resume",
  which the benchmark does not take, and the same command again refused the stopped run's
  directory: it had to be deleted and trained again."""
  base = recipes.base_config(token_dir, str(tmp_path / "compare"), max_iters=5000)
  base.update(n_layer=1, n_head=2, n_embd=32, block_size=16, batch_size=4, vocab_size=96,
              eval_iters=2)
  metrics = tmp_path / "compare" / "nanogpt" / "metrics.jsonl"

  def stop_once_training() -> None:  # a SIGTERM to the benchmark, as `timeout` sends it
    wait_for(lambda: metrics.exists() and '"event": "train"' in metrics.read_text(), 120,
             "the run to train")
    os.kill(os.getpid(), signal.SIGTERM)

  stopper = threading.Thread(target=stop_once_training, daemon=True)
  stopper.start()
  with pytest.raises(UserError, match=r"the comparison stops here \(run the same command "):
    recipes.compare(base, ["nanogpt"], [1.0])
  stopper.join()
  assert recipes.compare(base, ["nanogpt"], [1.0])[0]["tokens"] == 5000 * 4 * 16
  assert json.loads((metrics.parent / "config.json").read_text())["init_from"] == "resume"


@pytest.mark.slow
def test_a_sigterm_to_a_benchmark_is_one_line_and_leaves_no_temporary_files(tmp_path):
  """Left to its default, SIGTERM ended the benchmark at once: its /tmp folder and Grain's
  worker processes stayed behind."""
  log = tmp_path / "bench.log"
  with open(log, "w") as out:
    bench = subprocess.Popen(
        [sys.executable, "-m", "jaxgpt.bench", "--config=configs/quickstart.py",
         "--config.n_layer=1", "--config.n_embd=32", "--config.n_head=2",
         "--config.block_size=32", "--config.batch_size=2",
         "--config.gradient_accumulation_steps=1", "--iters=1000000", "--warmup=1"],
        cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=PYTHONPATH,
                           TMPDIR=str(tmp_path)),
        stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
      deadline = time.monotonic() + 120
      while "timing 1000000 iterations" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
      bench.send_signal(signal.SIGTERM)
      assert bench.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
      bench.kill()
  lines = log.read_text().splitlines()
  assert lines[-1] == "stopped by SIGTERM: the benchmark ended before its figures"
  assert "Traceback" not in log.read_text()
  assert [p.name for p in tmp_path.iterdir()] == ["bench.log"]


@pytest.mark.slow
def test_a_gpu_report_row_that_hangs_is_ended_and_said(tmp_path):
  """The row's limit is 20 s, long enough for a loaded machine's python to print first. A
  process it started (a GPU test's run, holding the device) ends with it."""
  from jaxgpt.bench import gpu_report
  log = io.StringIO()
  done = gpu_report._python(
      "-c", "import subprocess, time; p = subprocess.Popen(['sleep', '600']); "
      "print('compiling', p.pid, flush=True); time.sleep(600)", log=log, timeout=20)
  assert done.returncode == 124 and done.stderr.endswith("timed out after 20 s")
  assert "compiling" in log.getvalue() and "(exit 124)" in log.getvalue()
  started = int(done.stdout.split()[1])
  wait_for(lambda: not alive(started), 10, "the process the row started to end")


def test_gpu_tests_that_hang_are_ended_and_said(monkeypatch):
  """A hung GPU test stalled the report, and the device lent for it, without end."""
  from jaxgpt.bench import gpu_report

  monkeypatch.setattr(gpu_report, "TESTS_TIMEOUT_S", 1)  # pytest's imports alone take longer
  lines = list(gpu_report.report((), seen=("", "", "a GPU")))
  assert "`python -m pytest -q -m gpu`: timed out after 1 s" in lines


def test_gpu_report_keeps_a_page_that_exists(tmp_path):
  page = tmp_path / "gpu_report.md"
  page.write_text("an earlier GPU's figures\n")
  out = run_python("-m", "jaxgpt.bench", "--gpu_report", f"--out={page}")
  assert out.returncode == 1
  assert out.stderr.strip().splitlines()[-1] == (f"error: {page} exists; pass --out=PATH or "
                                                 "move it")
  assert page.read_text() == "an earlier GPU's figures\n"
  page.rename(tmp_path / "gpu_report.log")  # nor the log beside it
  out = run_python("-m", "jaxgpt.bench", "--gpu_report", f"--out={page}")
  assert out.returncode == 1 and "gpu_report.log exists" in out.stderr


@pytest.mark.slow
def test_gpu_report_writes_a_row_per_benchmark(tmp_path):
  """The first GPU run's one command, run here on the CPU with a tiny model."""
  from jaxgpt.bench import gpu_report
  tiny = {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32, "batch_size": 2,
          "gradient_accumulation_steps": 1, "vocab_size": 96, "dtype": "float32"}
  log = io.StringIO()
  lines = gpu_report.report((("quickstart", {}), ("quickstart", {"attention": "flash"}),
                             ("quickstart", {"remat": "dots"})),
                            iters=1, warmup=1, base=tiny, run_tests=False, log=log)
  header = next(lines)
  assert header.startswith("## GPU report: cpu (cpu), ") and f"jax {jax.__version__}" in header
  assert "flax " in header and "orbax-checkpoint " in header
  rows = [line.split(" | ") for line in lines if line.startswith("| quickstart")]
  assert [len(cells) for cells in rows] == [13, 13, 13]
  assert rows[0][1:4] == ["defaults", "xla", "1 x 2 x 32"]  # the kernel the row ran
  peak, plan_here, plan_for_card = rows[0][8:11]
  assert (peak, plan_for_card) == ("n/a", "n/a")  # a CPU keeps no peak, and is no card
  assert plan_here.endswith(" GiB")  # XLA's plan of the step as the row's process compiled it
  assert "failed: error: config.attention='flash'" in rows[1][2]  # one line, from its process
  # ... and the log holds each row's command and all it printed.
  assert log.getvalue().count("$ python -m jaxgpt.bench --config=") == 3
  assert "must be one of" in log.getvalue() and "(exit 1)" in log.getvalue()
  assert rows[2][1] == "remat=dots"  # and the rows after a failed one still run


def test_gpu_report_rows_wait_for_no_cpu_plan(monkeypatch):
  """The GPU runs row after row while the CPU compiles each row's plan: a row is printed as its
  run ends, timed alone ("row s"), and a plan that came later is printed below the table."""
  from jaxgpt.bench import gpu_report
  row = {"model": {"attention": "cudnn", "block_size": 1024}, "gradient_accumulation_steps": 32,
         "batch_size": 16, "ms_per_iter_median": 500.0, "tokens_per_sec": 1e6, "mfu": 0.3,
         "compile_s": 10.0, "peak_memory_bytes": 2**33, "step_plan_bytes": 2**33,
         "data_wait_fraction": 0.001}
  planned = threading.Event()
  monkeypatch.setattr(gpu_report, "_measure", lambda *a: row)
  monkeypatch.setattr(gpu_report, "_planned", lambda *a: planned.wait(60) and 2**32)
  page = gpu_report.report((("fineweb_40m", {}), ("gpt2_124m", {"remat": "dots"})),
                           run_tests=False, seen=("NVIDIA H100", "gpu", "H100"))
  lines = []
  while not lines or not lines[-1].startswith("| gpt2_124m"):  # both rows, no plan done
    lines.append(next(page))
  planned.set()
  lines += list(page)
  rows = [line.split(" | ") for line in lines if line.startswith("| ")][2:]
  assert [(cells[0], cells[10], cells[12]) for cells in rows] == [
      ("| fineweb_40m", "below", "0 |"), ("| gpt2_124m", "below", "0 |")]
  assert lines[-3:] == ["", "plan --device's of fineweb_40m (defaults): 4.00 GiB",
                        "plan --device's of gpt2_124m (remat=dots): 4.00 GiB"]
  # A row that failed gets no plan below the table, which would read as its result.
  monkeypatch.setattr(gpu_report, "_measure",
                      lambda name, *a: row if name == "fineweb_40m" else {"error": "boom"})
  planned.clear()
  page = gpu_report.report((("fineweb_40m", {}), ("gpt2_124m", {"remat": "dots"})),
                           run_tests=False, seen=("NVIDIA H100", "gpu", "H100"))
  lines = []
  while not lines or not lines[-1].startswith("| gpt2_124m"):
    lines.append(next(page))
  planned.set()
  assert list(page) == ["", "plan --device's of fineweb_40m (defaults): 4.00 GiB"]


def test_a_gpu_report_row_is_its_recipe_timed_as_the_page_says(monkeypatch):
  """Each row's process gets its recipe, its levers and the page's iterations, and the row
  reads its figures in their columns."""
  from jaxgpt.bench import gpu_report

  figures = {"model": {"attention": "cudnn", "block_size": 1024},
             "gradient_accumulation_steps": 32, "batch_size": 16, "ms_per_iter_median": 500.0,
             "tokens_per_sec": 1048576.0, "mfu": 0.3, "compile_s": 10.0,
             "peak_memory_bytes": 3 * 2**30, "step_plan_bytes": 2**31,
             "data_wait_fraction": 0.001}
  commands = []

  def bench(*args, log=None, timeout=None):
    commands.append(args)
    with open(next(a for a in args if a.startswith("--out="))[6:], "w") as f:
      f.write(json.dumps(figures) + "\n")
    return subprocess.CompletedProcess(args, 0, "", "")

  monkeypatch.setattr(gpu_report, "_python", bench)
  monkeypatch.setattr(gpu_report, "_planned", lambda *a: 2**32)
  page = list(gpu_report.report((("gpt2_124m", {"remat": "dots"}),), iters=7, warmup=3,
                                run_tests=False, seen=("NVIDIA H100", "gpu", "H100")))
  assert page[2].startswith("7 timed iterations after 3, ")
  [args] = commands
  recipe = os.path.join(defaults.CHECKOUT, "configs", "gpt2_124m.py")
  assert args[:3] == ("-m", "jaxgpt.bench", f"--config={recipe}")
  assert {"--config.remat=dots", "--iters=7", "--warmup=3"} <= set(args)
  cells = page[-1].split(" | ")
  assert cells[:-1] == ["| gpt2_124m", "remat=dots", "cudnn", "32 x 16 x 1024", "500.0",
                        "1,048,576", "30.0%", "10.0", "3.00 GiB", "2.00 GiB", "4.00 GiB",
                        "0.1%"]


def test_bench_peak_flops_flag_sets_the_mfu(tmp_path):
  r = throughput.measure(tiny_config(tmp_path, ""), iters=1, warmup=1, data_workers=0,
                         peak_flops=1e12)
  assert r["peak_flops"] == 1e12
  assert r["mfu"] == pytest.approx(r["tokens_per_sec"] * r["flops_per_token"] / 1e12)


def test_mfu_takes_the_config_s_peak_and_the_peer_s_own_tokens_per_second(tmp_path,
                                                                        monkeypatch):
  """config.peak_flops (a card the table lacks) is the bench's peak as a run's, --peak_flops
  over it; the PyTorch peer's tokens/s and MFU are of its own median step."""
  from jaxgpt.bench.__main__ import summary

  monkeypatch.setattr(throughput, "_time_peer", lambda *a, **k: {
      "ms_per_iter_median": 200.0, "ms_per_iter_mean": 400.0, "device_name": "cpu",
      "torch_version": "2", "compile": False, "autocast_bf16": False, "fused_adamw": False,
      "peak_memory_bytes": None, "first_step_s": 1.0, "n_params": 1})
  config = tiny_config(tmp_path, "", peak_flops=5e11)
  r = throughput.measure(config, iters=1, warmup=1, data_workers=0, peer="torch")
  assert r["peak_flops"] == 5e11
  assert r["mfu"] == pytest.approx(r["tokens_per_sec"] * r["flops_per_token"] / 5e11)
  p = r["peer"]
  assert p["tokens_per_sec"] == pytest.approx(2 * 4 * 16 / 0.2)
  assert p["mfu"] == pytest.approx(p["tokens_per_sec"] * r["flops_per_token"] / 5e11)
  assert r["jax_over_peer"] == pytest.approx(r["tokens_per_sec"] / p["tokens_per_sec"])
  text = summary(r)
  assert (f"; {r['tokens_per_sec']:,.0f} tokens/s; MFU {100 * r['mfu']:.1f}% of 0.5 TFLOP/s"
          in text)
  assert f"{p['tokens_per_sec']:,.0f} tokens/s, MFU {100 * p['mfu']:.1f}%" in text
