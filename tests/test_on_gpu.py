"""What only a real NVIDIA GPU shows: `python -m pytest -q -m gpu` (each skips without one).

The rest of the suite runs on the CPU, and test_gpu_compile.py compiles for GPUs
without one; these run a training on the device itself, in bfloat16 with the
attention kernel `auto` picks there, and read the device's own memory figures.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import jax
import pytest
from conftest import PYTHONPATH, ROOT, iter_losses, records, tiny_config, write_config_file

from jaxgpt import attention, gpus, train
from jaxgpt.plan import memory

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs an NVIDIA GPU")]


def python_on_gpu(*args: str, **env: str) -> subprocess.CompletedProcess:
  """`python ARGS` on the GPU, beside this process, which holds its own share of the GPU's
  memory (75% unless XLA_CLIENT_MEM_FRACTION says) already."""
  inherited = {k: v for k, v in os.environ.items()  # jaxlib refuses both fractions set at once
               if k not in ("JAX_PLATFORMS", "XLA_PYTHON_CLIENT_MEM_FRACTION")}
  return subprocess.run([sys.executable, *args], cwd=ROOT,
                        env={**inherited, "PYTHONPATH": PYTHONPATH, **env},
                        capture_output=True, text=True, timeout=600, check=False)


def launch_on_gpu(config_file: str, memory_fraction: float) -> subprocess.CompletedProcess:
  """`python launch.py --config=FILE` on the GPU, with this share of its memory for JAX."""
  return python_on_gpu("launch.py", f"--config={config_file}",
                       XLA_CLIENT_MEM_FRACTION=str(memory_fraction))


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
  losses_a, losses_b = iter_losses(unbroken.out_dir), iter_losses(resumed.out_dir)
  assert [i for i, _ in losses_b] == list(range(8))
  assert losses_a[-1][1] < losses_a[0][1] - 0.5  # it learns
  # The GPU's scatter-adds (the embedding's gradient) and cuDNN's attention backward sum in
  # no fixed order, so bfloat16 roundings may differ: close, not bit for bit as on the CPU. A
  # resume on other batches or another optimizer state differs by far more.
  for (_, a), (_, b) in zip(losses_a, losses_b):
    assert b == pytest.approx(a, abs=1e-2)


def test_a_step_too_big_for_the_device_stops_before_training_with_a_layout_that_fits(
    tmp_path, token_dir):
  """launch.py with 2% of the GPU's memory for JAX, on a step several times that size.

  The need is many layers' attention scores (attention=xla keeps them for the
  backward pass), each buffer a fraction of the room, as in a real model too
  big for its card, rather than one buffer larger than the device.
  """
  fraction = 0.02
  own_fraction = memory.mem_fraction()
  room = fraction * jax.devices()[0].memory_stats()["bytes_limit"] / own_fraction
  block, n_layer = 512, 24
  kept_per_window = n_layer * block * block * 3  # scores (f32) or probabilities (bf16) a layer
  batch = 2 ** math.ceil(math.log2(4 * room / kept_per_window))
  config_file = write_config_file(tmp_path, token_dir, n_layer=n_layer, n_head=1, n_embd=64,
                                  block_size=block, batch_size=batch,
                                  gradient_accumulation_steps=1, attention="xla",
                                  dtype="bfloat16", max_iters=2)
  done = launch_on_gpu(config_file, fraction)
  assert done.returncode == 1, done.stderr[-3000:]
  assert re.fullmatch(
      r"error: the train step needs [\d.]+ GiB per device and .* has [\d.]+ GiB for it .*the "
      r"same tokens per iteration fit with --config.batch_size=\d+ "
      r"--config.gradient_accumulation_steps=\d+ .*Nothing was trained or written.",
      done.stderr.strip().splitlines()[-1]), done.stderr[-3000:]
  out_dir = tmp_path / "run"
  assert not (out_dir / "metrics.jsonl").exists() and not (out_dir / "checkpoints").exists()


def test_launch_trains_with_the_kernel_auto_picks_and_ends_with_a_sample(tmp_path, token_dir):
  """The user's command on the device: attention=auto probed and settled, MFU from the peak
  table, evaluation, a checkpoint, and the closing sample decoded with the KV cache."""
  config_file = write_config_file(tmp_path, token_dir, n_embd=64, block_size=64, vocab_size=50304,
                                  batch_size=8, gradient_accumulation_steps=1, dtype="bfloat16",
                                  attention="auto", max_iters=20, eval_interval=10,
                                  log_interval=5, sample_start="The", sample_tokens=16)
  done = launch_on_gpu(config_file, 0.1)
  assert done.returncode == 0, done.stderr[-3000:]
  device = jax.devices()[0]
  kernel = attention.for_device("auto", "bfloat16", 32, device)
  assert f"bfloat16 activations, {kernel} attention" in done.stderr
  assert "cuDNN attention fails" not in done.stderr, done.stderr[-3000:]
  train_records = records(str(tmp_path / "run"), "train")
  assert [r["iter"] for r in train_records] == [0, 5, 10, 15]
  if gpus.peak_flops(device.device_kind, 0) is not None:
    assert all(0 < r["mfu"] < 1 for r in train_records)
  evals = records(str(tmp_path / "run"), "eval")
  assert [r["iter"] for r in evals] == [0, 10, 20] and evals[-1]["val_loss"] < evals[0]["val_loss"]
  sample = done.stdout.split("---------------\n")[1]
  assert sample.startswith("The") and len(sample) > len("The")
  # Beside a process holding JAX's 75% of the GPU (this one), as a sample is run beside the
  # training on its GPU: it takes the memory it needs, not 75% again.
  beside = python_on_gpu("-m", "jaxgpt.sample", f"--out_dir={tmp_path / 'run'}", "--start=The",
                         "--num_samples=1", "--max_new_tokens=8")
  assert beside.returncode == 0 and beside.stdout.startswith("The"), beside.stderr[-3000:]
