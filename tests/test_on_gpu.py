"""What only a real NVIDIA GPU shows: `python -m pytest -q -m gpu` (each skips without one).

The rest of the suite runs on the CPU, and test_gpu_compile.py compiles for GPUs
without one; these run a training on the device itself, in bfloat16 with the
attention kernel `auto` picks there, and read the device's own memory figures.
"""

from __future__ import annotations

import math
import os

import jax
import pytest
from conftest import records, tiny_config

from jaxgpt import train
from jaxgpt.errors import UserError

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs an NVIDIA GPU")]


def test_a_bfloat16_run_starts_at_the_uniform_loss_and_resumes_as_if_unbroken(tmp_path,
                                                                              token_dir):
  kw = {"dtype": "bfloat16", "attention": "auto", "eval_interval": 4, "lr_decay_iters": 8}
  unbroken = tiny_config(tmp_path / "a", token_dir, max_iters=8, **kw)
  train.train(unbroken)
  train.train(tiny_config(tmp_path / "b", token_dir, max_iters=4, **kw))
  resumed = tiny_config(tmp_path / "b", token_dir, max_iters=8, init_from="resume", **kw)
  train.train(resumed)

  first_eval = records(unbroken.out_dir, "eval")[0]
  assert first_eval["val_loss"] == pytest.approx(math.log(unbroken.vocab_size), abs=0.1)
  losses_a = [(r["iter"], r["loss"]) for r in records(unbroken.out_dir, "train")]
  losses_b = [(r["iter"], r["loss"]) for r in records(resumed.out_dir, "train")]
  assert [i for i, _ in losses_b] == list(range(8))
  assert losses_a[-1][1] < losses_a[0][1] - 0.5  # it learns
  # XLA's GPU scatter-adds (the embedding's gradient) sum in no fixed order, so equal to
  # rounding, not bit for bit as on the CPU; a resume at another batch differs by far more.
  for (_, a), (_, b) in zip(losses_a, losses_b):
    assert b == pytest.approx(a, abs=2e-3)


def test_a_step_too_big_for_the_device_stops_before_training_with_a_layout_that_fits(
    tmp_path, token_dir):
  room = jax.devices()[0].memory_stats()["bytes_limit"]
  block, vocab = 64, 50304
  window_logits = block * vocab * 4  # float32 logits of one window, kept whole (no chunks)
  batch = 2 ** math.ceil(math.log2(3 * room / window_logits))
  config = tiny_config(tmp_path, token_dir, n_layer=1, n_head=1, n_embd=64, block_size=block,
                       vocab_size=vocab, batch_size=batch, gradient_accumulation_steps=1,
                       loss_chunk_size=0, dtype="bfloat16", max_iters=2)
  with pytest.raises(UserError, match=(
      r"the train step needs [\d.]+ GiB per device and .* has [\d.]+ GiB for it .*the same "
      r"tokens per iteration fit with --config.batch_size=\d+ "
      r"--config.gradient_accumulation_steps=\d+ .*Nothing was trained or written")):
    train.train(config)
  assert not os.path.exists(os.path.join(config.out_dir, "metrics.jsonl"))
  assert not os.path.exists(os.path.join(config.out_dir, "checkpoints"))
