"""fineweb_40m with the modern recipe: same model size, data and tokens per iteration.

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
  # The learning rates that won the 4-layer sweep in docs/benchmarks.md; not yet swept at 40M.
  c.learning_rate = 4e-3  # AdamW: embeddings, head and gains
  c.min_lr = 4e-4
  c.muon_learning_rate = 0.02  # Muon: the blocks' matrices
  return c
