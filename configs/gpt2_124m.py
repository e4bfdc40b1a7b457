"""GPT-2 small (124M: 12 layers, 12 heads, 768 wide) on FineWeb, 524,288 tokens per iteration.

19,073 iterations are 10.0B tokens, about one pass over FineWeb sample-10BT.
Data: `python -m jaxgpt.prepare fineweb --out=data/fineweb`.
"""

from jaxgpt import defaults


def get_config():
  c = defaults.get_config()
  c.out_dir = "out/gpt2_124m"
  c.dataset = "fineweb"
  c.n_layer = 12
  c.n_head = 12
  c.n_embd = 768
  c.block_size = 1024
  c.batch_size = 32
  c.gradient_accumulation_steps = 16  # 16 x 32 x 1024 = 524,288 tokens per iteration
  c.dropout = 0.0
  c.bias = False
  c.learning_rate = 6e-4
  c.min_lr = 6e-5
  c.max_iters = 19073
  c.warmup_iters = c.get_ref("max_iters") * 3 // 80  # 3.75% of the run: 715 of 19,073
  c.weight_decay = 0.1
  c.eval_interval = 500
  c.eval_iters = 100
  c.log_interval = 10
  c.dtype = "bfloat16"
  return c
