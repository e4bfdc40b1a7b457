"""A small GPT on the built-in python_docs corpus: a few minutes on 2 CPU cores, no download."""

from jaxgpt import defaults


def get_config():
  c = defaults.get_config()
  c.out_dir = "out/quickstart"
  c.dataset = "python_docs"
  c.n_layer = 4
  c.n_head = 4
  c.n_embd = 128
  c.block_size = 128
  c.batch_size = 8
  c.gradient_accumulation_steps = 1
  c.max_iters = 250
  c.eval_interval = 50
  c.eval_iters = 8
  c.log_interval = 10
  c.learning_rate = 2e-3
  c.min_lr = 2e-4
  c.warmup_iters = c.get_ref("max_iters") // 10  # 10% of the run: 25 of 250
  c.weight_decay = 0.1
  c.dropout = 0.0
  c.dtype = "float32"
  c.sample_tokens = 60
  c.sample_start = "The function returns"
  return c
