"""Is the model any good: HellaSwag and a text's perplexity, scored in the loop or by `evaluate`.

A layer around the core: it imports the core, never the reverse; launch.py
plugs its tasks into the loop as a hook when config.eval_tasks asks.
"""
