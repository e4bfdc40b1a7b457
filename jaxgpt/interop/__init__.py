"""Other formats' weights: GPT-2 / Hugging Face in and out, a nanoGPT ckpt.pt in, and which
weights a command reads.

A layer around the core: launch.py imports it only for init_from=gpt2* or
nanogpt:PATH, and hands the loop a params tree.
"""
