"""Running a trained model: sampling with a KV cache (decoding), batched row losses (scoring).

A layer around the core, used by `sample`, `evaluate`, the evaluation tasks,
the loop's closing sample (a hook launch.py plugs in) and the benchmarks.
"""
