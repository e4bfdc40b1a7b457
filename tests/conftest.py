"""Shared fixtures: tiny configs and token shards the tests write themselves."""

from __future__ import annotations

import atexit
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor

_PLATFORMS_GIVEN = "JAX_PLATFORMS" in os.environ
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the suite is for the CPU, whatever is here

import jax
import ml_collections
import numpy as np
import pytest
from absl import flags

from jaxgpt import defaults, run_dir, sharding, sinks, train, train_step
from jaxgpt.model import GPT, GPTConfig, init_params
from jaxgpt.plan import targets
from jaxgpt.prep import shards

# Grain's worker processes read absl flags; under pytest nobody parsed them.
flags.FLAGS.mark_as_parsed()


_SHARED_CACHE = "JAXGPT_TESTS_XLA_CACHE"  # the session's XLA cache, for pytest-xdist's workers


def pytest_configure(config: pytest.Config) -> None:
  """`-m gpu` is for this machine's GPU: JAX picks the platform itself there (unless
  JAX_PLATFORMS says), where the tests marked gpu would otherwise skip, finding a CPU.

  The session's process (under `-n`, the one that starts the workers) makes the folder of
  the XLA cache that `pytest_collection_modifyitems` puts to use, and removes it at its end.
  """
  # A shell without job control starts a background command (`pytest ... &` in a CI script,
  # nohup) with SIGINT ignored, which Python then keeps and every process the tests start
  # inherits: the Ctrl-C tests' SIGINT would do nothing (a wait for a lock hung for ever). The
  # suite is for a terminal's Ctrl-C, so Python's own handler, whose processes get the default.
  if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
  # The default run's programs (its -m starts "not slow") compile at XLA's CPU optimisation level
  # 0, faster for the tests' tiny programs; the slow end-to-end tests' at the level a user's run
  # compiles at, as a GPU's. An XLA_FLAGS that sets the level already is kept (xdist's workers
  # inherit this one).
  flags_given = os.environ.get("XLA_FLAGS", "")
  if (config.option.markexpr.startswith("not slow")
      and "--xla_backend_optimization_level" not in flags_given):
    os.environ["XLA_FLAGS"] = f"{flags_given} --xla_backend_optimization_level=0".strip()
  if not hasattr(config, "workerinput"):
    cache_dir = tempfile.mkdtemp(prefix="jaxgpt-tests-xla-")
    atexit.register(shutil.rmtree, cache_dir, ignore_errors=True)
    os.environ[_SHARED_CACHE] = cache_dir
  if config.option.markexpr == "gpu" and not _PLATFORMS_GIVEN:
    del os.environ["JAX_PLATFORMS"]
    jax.config.update("jax_platforms", None)


@pytest.hookimpl(trylast=True)  # after -m deselected
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
  """One XLA compilation cache for the session's own processes (pytest-xdist's workers
  share it).

  The tests build their own jitted steps of the same few tiny models, and XLA
  would compile each program again for each: its persistent cache, in a
  folder of this session's, compiles each once (the same executable, so the
  same numbers). Not for the Pythons the tests start: one killed in a write
  would leave an entry that every later read warns on. Not where gpu_compile
  tests will compile: the CUDA plugin's compile-only client writes entries it
  cannot read back. Nor where JAX_COMPILATION_CACHE_DIR names a cache already.
  """
  # A size turns on JAX's file lock (the filelock package) over the entries, which xdist's
  # workers read and write at once: unlocked, a read of one being written warns and compiles.
  if jax.config.jax_compilation_cache_max_size == -1:  # unless one was set
    jax.config.update("jax_compilation_cache_max_size", 2**40)
  if jax.config.jax_compilation_cache_dir or (
      targets.plugin_installed() and any(item.get_closest_marker("gpu_compile") for item in items)):
    return
  jax.config.update("jax_compilation_cache_dir", os.environ[_SHARED_CACHE])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


TINY_VOCAB = 96

# A one-layer, 8-wide model of 65 ids (a character-level one) that gpt2.export writes.
EXPORTABLE = {"n_layer": 1, "n_head": 1, "n_embd": 8, "block_size": 8, "vocab_size": 65,
              "bias": True, "gelu_approximate": True}


def tiny_config(tmp_path, data_dir: str, **overrides) -> ml_collections.ConfigDict:
  """A model and run small enough to train in seconds on a CPU."""
  c = defaults.get_config()
  c.update(out_dir=str(tmp_path / "run"), dataset="synthetic", data_dir=data_dir,
           n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=TINY_VOCAB,
           batch_size=4, gradient_accumulation_steps=2, max_iters=6, eval_interval=3,
           eval_iters=2, log_interval=1, learning_rate=1e-2, min_lr=1e-3, warmup_iters=2,
           lr_decay_iters=6, dtype="float32")
  c.update(overrides)
  return c


def tiny_model(**overrides) -> GPTConfig:
  """A 2-layer, 32-wide GPT over a 64-token vocabulary, block 16, for tests of the model alone."""
  return GPTConfig(**{"vocab_size": 64, "block_size": 16, "n_layer": 2, "n_head": 2,
                      "n_embd": 32, **overrides})


def tiny_gpt(**overrides) -> tuple[GPT, dict]:
  """tiny_model(**overrides) as a GPT and its params, initialised from PRNGKey(0)."""
  model = GPT(tiny_model(**overrides))
  return model, init_params(model, jax.random.PRNGKey(0))


def float32_config(**keys) -> ml_collections.ConfigDict:
  """The run defaults with `keys` (an architecture, say), dropout off and float32: a model whose
  logits are compared with another implementation's."""
  c = defaults.get_config()
  c.update(dropout=0.0, dtype="float32")
  c.update(keys)
  return c


def hf_logits(model, tokens_BT: np.ndarray) -> np.ndarray:
  """A PyTorch model's logits (transformers' GPT-2's), as numpy; torch is imported only here,
  so that conftest loads where it is absent."""
  import torch

  with torch.no_grad():
    return model(torch.tensor(tokens_BT)).logits.numpy()


def fake_device(platform: str = "gpu", compute_capability: str | None = None,
                kind: str = "x", process_index: int = 0) -> types.SimpleNamespace:
  """What attention, the peak table and the mesh read of a jax.Device: platform, capability,
  kind, process."""
  return types.SimpleNamespace(platform=platform, compute_capability=compute_capability,
                               device_kind=kind, process_index=process_index)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A child Python finds the repository first, then whatever this one's environment added (the
# wheels a GPU machine is handed with pip --target, say).
PYTHONPATH = os.pathsep.join([ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])
recipe = defaults.recipe  # configs/<name>.py, as launch.py loads it


def read_jsonl(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f]


def records(out_dir: str, event: str) -> list[dict]:
  """Every record of one event in a run's metrics.jsonl, as written (nothing replaced)."""
  return [r for r in read_jsonl(run_dir.RunDir(out_dir).metrics_path) if r["event"] == event]


def iter_losses(out_dir: str) -> list[tuple[int, float]]:
  """(iter, loss) of each train record of a run: what a resumed run repeats bit for bit."""
  return [(r["iter"], r["loss"]) for r in records(out_dir, "train")]


def step_of(config: ml_collections.ConfigDict) -> train_step.StepConfig:
  return train_step.StepConfig.from_config(config)


def setup_of(config: ml_collections.ConfigDict) -> train_step.TrainSetup:
  """The model, optimizer and state shapes a run of `config` builds."""
  return train_step.build(step_of(config))


def build_state(config: ml_collections.ConfigDict
                ) -> tuple[train_step.TrainSetup, train_step.TrainState]:
  setup = setup_of(config)
  return setup, setup.new_state()


def restore_state(config: ml_collections.ConfigDict, at_step: int
                  ) -> tuple[train_step.TrainState, dict]:
  """The train state and metadata of one checkpoint of the config's run, on one device."""
  ckpts = run_dir.RunDir(config.out_dir).checkpoints(read_only=True)
  on_one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  try:
    meta = ckpts.read_meta(at_step)
    abstract_state = sharding.abstract_like(setup_of(config).abstract_state, on_one)
    return ckpts.restore(at_step, abstract_state, meta), meta
  finally:
    ckpts.close()


def checkpoint_steps(out_dir: str) -> list[int]:
  return run_dir.RunDir(out_dir).checkpoints(read_only=True).steps()


def run_python(*args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
  """`python ARGS` in the repository root on the CPU, its output captured."""
  return subprocess.run([sys.executable, *args], cwd=ROOT,
                        env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=PYTHONPATH,
                                 **env),
                        capture_output=True, text=True, timeout=timeout, check=False)


def pattern_tokens(n: int, seed: int = 0) -> np.ndarray:
  """A learnable stream: the same 12 random 'words' in a random order set by `seed`."""
  vocab_rng, rng = np.random.default_rng(0), np.random.default_rng(seed)
  words = [vocab_rng.integers(0, TINY_VOCAB, size=vocab_rng.integers(2, 6)) for _ in range(12)]
  out: list[int] = []
  while len(out) < n:
    out.extend(words[rng.integers(len(words))])
  return np.asarray(out[:n], dtype=np.uint16)


def pattern_windows(n: int, block_size: int, seed: int = 0) -> np.ndarray:
  """n windows of block_size + 1 tokens cut from pattern_tokens(..., seed)."""
  return pattern_tokens(n * (block_size + 1), seed).reshape(n, block_size + 1)


@pytest.fixture
def token_dir(tmp_path) -> str:
  """llm.c shards of a learnable synthetic stream: two train files and one val file."""
  d = tmp_path / "data"
  d.mkdir()
  shards.write_shard(str(d / "syn_train_000000.bin"), pattern_tokens(3000, seed=1))
  shards.write_shard(str(d / "syn_train_000001.bin"), pattern_tokens(2000, seed=2))
  shards.write_shard(str(d / "syn_val_000000.bin"), pattern_tokens(1000, seed=3))
  return str(d)


def write_config_file(tmp_path, token_dir: str, **overrides) -> str:
  """A recipe file for launch.py: tiny_config(tmp_path, token_dir, **overrides)."""
  path = tmp_path / "recipe.py"
  path.write_text(textwrap.dedent(f"""
      import sys
      sys.path.insert(0, {os.path.join(ROOT, 'tests')!r})
      from conftest import tiny_config
      import pathlib

      def get_config():
        return tiny_config(pathlib.Path({str(tmp_path)!r}), {token_dir!r}, **{overrides!r})
      """))
  return str(path)


# The words of write_hellaswag's examples.
TEXT = ("the man is holding a rope and climbs up the wall while people watch from below "
        "she then takes a brush and paints the fence in long even strokes")
WORDS = TEXT.split()


def write_hellaswag(path, n: int, seed: int = 0, long_context: int = 0) -> str:
  """n examples in the published format: ctx, 4 endings, label and the other fields."""
  rng = np.random.default_rng(seed)
  text = lambda k: " ".join(rng.choice(WORDS, size=k)).capitalize()
  with open(path, "w", encoding="utf-8") as f:
    for i in range(n):
      ctx = text(long_context if i == 0 and long_context else int(rng.integers(4, 20)))
      example = {"ind": i, "activity_label": "Painting", "ctx_a": ctx, "ctx_b": "",
                 "ctx": ctx, "split": "val", "split_type": "indomain",
                 "label": int(rng.integers(4)),
                 "endings": [text(int(rng.integers(1, 12))) + "." for _ in range(4)],
                 "source_id": f"test~{i}"}
      f.write(json.dumps(example) + "\n")
  return str(path)


def truncate_state(step_dir: str, files: str = "*", keep: float = 0.5) -> None:
  """Cuts every file of a checkpoint's state (or those matching `files`) to `keep` of it."""
  for path in glob.glob(os.path.join(step_dir, "state", "**", files), recursive=True):
    if os.path.isfile(path) and os.path.getsize(path) > 0:
      with open(path, "r+b") as f:
        f.truncate(int(os.path.getsize(path) * keep))


def free_port() -> int:
  """A localhost port free now, for a coordinator of processes the test starts.

  The coordinator binds it seconds later, once JAX has loaded. A port the kernel picks (bind
  to 0) is one of its ephemeral range, which it also hands every outgoing connection made
  meanwhile (the other xdist worker's, gRPC's own): one of those could take it first. So a
  random port below that range, where only an explicit bind lands.
  """
  try:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
      ephemeral_low = int(f.read().split()[0])
  except (OSError, ValueError, IndexError):
    ephemeral_low = 32768  # Linux's default
  low = 10000 if ephemeral_low > 10000 else 1024  # past the well-known services where it can
  rng = np.random.default_rng()  # not the tests' seeded streams: two workers, two ports
  for port in rng.integers(low, max(ephemeral_low, low + 1), size=50):
    with socket.socket() as s:
      try:
        s.bind(("localhost", int(port)))
      except OSError:
        continue
      return int(port)
  with socket.socket() as s:  # a crowded host: the kernel's pick
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def start_python(*args: str, env: dict | None = None, **popen) -> subprocess.Popen:
  """`python ARGS` in the repository root on the CPU, in the background, output merged."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=PYTHONPATH, **(env or {}))
  return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, **popen)


def communicate_all(procs: list[subprocess.Popen], timeout: float) -> list[tuple]:
  """Each process's (stdout, stderr), read from all at once. Read one after another, the
  processes of one run could hang: one whose pipe is not read blocks once it fills (64 KiB of
  warnings), and the others wait for it at their next collective."""
  with ThreadPoolExecutor(len(procs)) as pool:
    return list(pool.map(lambda p: p.communicate(timeout=timeout), procs))


def start_launch(config_file: str, *flags: str, **kwargs) -> subprocess.Popen:
  return start_python("launch.py", f"--config={config_file}", *flags, **kwargs)


def alive(pid: int) -> bool:
  """Whether process `pid` runs (not ended, nor a zombie its parent has yet to reap)."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except OSError:
    return False


def children(pid: int) -> dict[int, bytes]:
  """The live processes whose parent is `pid`, and their command lines, from /proc (psutil may
  be missing)."""
  found = {}
  for entry in filter(str.isdigit, os.listdir("/proc")):
    try:
      with open(f"/proc/{entry}/stat") as f:
        state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
      with open(f"/proc/{entry}/cmdline", "rb") as f:
        cmdline = f.read()
    except OSError:  # ended meanwhile
      continue
    if int(ppid) == pid and state != "Z":
      found[int(entry)] = cmdline
  return found


def sigterm_after(monkeypatch, at: int, fresh_only: bool = False) -> None:
  """SIGTERM to this process once the loop has taken iteration `at`'s log (the next step
  queued); `fresh_only`: not in a resumed run."""
  real_log = train._Loop.defer_log

  def log_then_sigterm(loop, it, step_metrics):
    real_log(loop, it, step_metrics)
    if it == at and not (fresh_only and loop.config.resumed):
      os.kill(os.getpid(), signal.SIGTERM)

  monkeypatch.setattr(train._Loop, "defer_log", log_then_sigterm)


def disk_full_from(monkeypatch, at: int) -> None:
  """metrics.jsonl's writes fail as on a full disk from iteration `at`'s record on."""
  real_write = sinks.MetricsWriter.write

  def write(writer, record):
    if record["iter"] >= at:
      raise OSError(28, "No space left on device")
    real_write(writer, record)

  monkeypatch.setattr(sinks.MetricsWriter, "write", write)


def wait_for(predicate, timeout: float, what: str) -> None:
  deadline = time.monotonic() + timeout
  while not predicate():
    if time.monotonic() > deadline:
      raise TimeoutError(what)
    time.sleep(0.005)


def wait_until_training(out_dir: str, timeout: float) -> None:
  """Until the run in `out_dir` has logged a few steps, so a signal sent now reaches the loop."""
  path = run_dir.RunDir(out_dir).metrics_path
  wait_for(lambda: os.path.exists(path) and len(read_jsonl(path)) > 3, timeout,
           "training did not start")


def guard_loop_transfers(monkeypatch) -> None:
  """Makes any device-to-host transfer in the training loop an error, but in the methods that
  fetch on purpose (the step metrics a step late, evaluations, task scores, the end).

  JAX's transfer guard alone fires on a GPU, never on the CPU the suite runs on (an array
  there is host memory already: jax-ml/jax#16602), so a read of an array's value in the loop's
  thread (float, bool, .item(), jax.device_get, formatting) raises too; np.asarray of a CPU
  array reads its buffer around both, and only a GPU run of these tests catches it.
  """
  from jax._src import array as jax_array  # JAX's private accessors: checked below

  guarded = threading.local()  # Orbax's and Grain's threads may read while the loop runs

  def refusing(read):
    def checked(self, *args):
      if getattr(guarded, "on", False):
        raise AssertionError("the training loop read a device value between log points")
      return read(self, *args)
    return checked

  monkeypatch.setattr(jax_array.ArrayImpl, "_value",
                      property(refusing(jax_array.ArrayImpl._value.fget)))
  monkeypatch.setattr(jax_array.ArrayImpl, "item", refusing(jax_array.ArrayImpl.item))

  def with_guard(fn, on: bool):
    def call(*args, **kwargs):
      before, guarded.on = getattr(guarded, "on", False), on
      try:
        with jax.transfer_guard_device_to_host("disallow_explicit" if on else "allow"):
          return fn(*args, **kwargs)
      finally:
        guarded.on = before
    return call

  for name in ("flush_log", "eval_and_save", "score_tasks", "stop", "close"):
    monkeypatch.setattr(train._Loop, name, with_guard(getattr(train._Loop, name), False))
  monkeypatch.setattr(train, "_loop", with_guard(train._loop, True))
  fresh = jax.numpy.arange(3.0)[1] + 1  # nothing of it on the host yet
  for read in (float, lambda x: x.item()):
    with pytest.raises(AssertionError, match="read a device value"):  # else it guards nothing
      with_guard(read, True)(fresh)
