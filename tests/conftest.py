"""Shared fixtures: tiny configs and token shards the tests write themselves."""

from __future__ import annotations

import importlib.util
import json
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import ml_collections
import numpy as np
import pytest
from absl import flags

from jaxgpt import defaults, shards

# Grain's worker processes read absl flags; under pytest nobody parsed them.
flags.FLAGS.mark_as_parsed()

TINY_VOCAB = 96


def tiny_config(tmp_path, data_dir: str, **overrides) -> ml_collections.ConfigDict:
  """A model and run small enough to train in seconds on a CPU."""
  c = defaults.get_config()
  c.out_dir = str(tmp_path / "run")
  c.dataset = "synthetic"
  c.data_dir = data_dir
  c.n_layer, c.n_head, c.n_embd = 2, 2, 32
  c.block_size = 16
  c.vocab_size = TINY_VOCAB
  c.batch_size = 4
  c.gradient_accumulation_steps = 2
  c.max_iters = 6
  c.eval_interval = 3
  c.eval_iters = 2
  c.log_interval = 1
  c.learning_rate = 1e-2
  c.min_lr = 1e-3
  c.warmup_iters = 2
  c.lr_decay_iters = 6
  c.dtype = "float32"
  c.update(overrides)
  return c


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def recipe(name: str) -> ml_collections.ConfigDict:
  """The config of configs/<name>.py, as launch.py would load it."""
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def read_jsonl(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f]


def pattern_tokens(n: int, seed: int = 0) -> np.ndarray:
  """A learnable stream: the same 12 random 'words' in a random order set by `seed`."""
  vocab_rng, rng = np.random.default_rng(0), np.random.default_rng(seed)
  words = [vocab_rng.integers(0, TINY_VOCAB, size=vocab_rng.integers(2, 6)) for _ in range(12)]
  out: list[int] = []
  while len(out) < n:
    out.extend(words[rng.integers(len(words))])
  return np.asarray(out[:n], dtype=np.uint16)


@pytest.fixture
def token_dir(tmp_path) -> str:
  """llm.c shards of a learnable synthetic stream: two train files and one val file."""
  d = tmp_path / "data"
  d.mkdir()
  shards.write_shard(str(d / "syn_train_000000.bin"), pattern_tokens(3000, seed=1))
  shards.write_shard(str(d / "syn_train_000001.bin"), pattern_tokens(2000, seed=2))
  shards.write_shard(str(d / "syn_val_000000.bin"), pattern_tokens(1000, seed=3))
  return str(d)
