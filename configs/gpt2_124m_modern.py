"""gpt2_124m with the modern recipe: same model size, data and tokens per iteration.

The changes of configs/fineweb_40m_modern.py (see there and docs/benchmarks.md).
Not GPT-2's architecture: `jaxgpt.export` refuses it.
"""

from jaxgpt import defaults


def get_config():
  c = defaults.recipe("gpt2_124m")
  c.out_dir = "out/gpt2_124m_modern"
  c.update(defaults.MODERN)
  # The learning rates that won the 4-layer sweep in docs/benchmarks.md; not yet swept at 124M.
  c.learning_rate = 4e-3  # AdamW: embeddings, head and gains
  c.min_lr = 4e-4
  c.muon_learning_rate = 0.02  # Muon: the blocks' matrices
  return c
