"""The 40M-parameter GPT on FineWeb: 12 layers, 384 wide, 524,288 tokens per iteration.

Data: `python -m jaxgpt.prepare fineweb --out=data/fineweb` (FineWeb sample-10BT).
"""

from jaxgpt import defaults


def get_config():
  c = defaults.get_config()
  c.out_dir = "out/fineweb_40m"
  c.dataset = "fineweb"
  c.n_layer = 12
  c.n_head = 6
  c.n_embd = 384
  c.block_size = 1024
  # 32 x 16 x 1024 = 524,288 tokens per iteration, as the nanoGPT run this recipe follows
  # (gradient accumulation 32). Micro-batches of 16 fit an RTX 4070 (12 GB) under JAX's
  # default preallocation with 2.2 GiB to spare; 32 would fit only by XLA recomputing
  # activations (docs/benchmarks.md, "Will it fit").
  c.batch_size = 16
  c.gradient_accumulation_steps = 32
  c.dropout = 0.0
  c.bias = False
  c.learning_rate = 5e-4
  c.min_lr = 5e-5
  c.max_iters = 20000
  c.warmup_iters = c.get_ref("max_iters") * 7 // 200  # 3.5% of the run: 700 of 20,000
  c.weight_decay = 0.1
  c.beta1 = 0.9
  c.beta2 = 0.95
  c.grad_clip = 1.0
  c.eval_interval = 500
  c.eval_iters = 100
  c.log_interval = 10
  c.dtype = "bfloat16"
  return c
