"""gpt2_124m with the modern recipe: same depth, width, FLOPs per
token, data and tokens per iteration; its untied head adds 38.6M parameters
(162.2M in all, with no position table).

The changes of configs/fineweb_40m_modern.py (see there and docs/benchmarks.md).
Not GPT-2's architecture: `jaxgpt.export` refuses it.
"""

from jaxgpt import defaults


def get_config():
  c = defaults.recipe("gpt2_124m")
  c.out_dir = "out/gpt2_124m_modern"
  c.update(defaults.MODERN)
  # The 4-layer sweep in docs/benchmarks.md put AdamW's best rate in the modern recipe at 4x
  # the nanoGPT recipe's, and Muon's at 0.02 (Muon's step is scaled to the matrix's shape, so
  # its rate carries across sizes). Not yet swept at 124M.
  c.learning_rate = 4 * c.learning_rate  # AdamW: embeddings, head and gains (0.0024)
  c.min_lr = c.get_ref("learning_rate") / 10  # follows --config.learning_rate
  c.muon_learning_rate = 0.02  # Muon: the blocks' matrices
  return c
