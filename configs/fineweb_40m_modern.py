"""fineweb_40m with the modern recipe: same depth, width, FLOPs per
token, data and tokens per iteration; its untied head adds 19.3M parameters
(59.9M in all, with no position table).

Rotary positions, RMSNorm with norms on queries and keys, ReLU², an untied
zero-initialised head and projections, soft-capped logits, Muon for the
blocks' matrices (AdamW for the rest) and a warmup-stable-decay schedule:
each measured alone and together in docs/benchmarks.md ("A modern recipe").
Not GPT-2's architecture: `jaxgpt.export` refuses it.
"""

from jaxgpt import defaults


def get_config():
  c = defaults.recipe("fineweb_40m")
  c.out_dir = "out/fineweb_40m_modern"
  c.update(defaults.MODERN)
  # The 4-layer sweep in docs/benchmarks.md put AdamW's best rate in the modern recipe at 4x
  # the nanoGPT recipe's, and Muon's at 0.02 (Muon's step is scaled to the matrix's shape, so
  # its rate carries across sizes). Not yet swept at 40M.
  c.learning_rate = 4 * c.learning_rate  # AdamW: embeddings, head and gains (0.002)
  c.min_lr = c.get_ref("learning_rate") / 10  # follows --config.learning_rate
  c.muon_learning_rate = 0.02  # Muon: the blocks' matrices
  return c
