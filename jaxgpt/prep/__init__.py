"""Corpus to token shards: readers, tokenizing in worker processes, shard writing, FineWeb.

A layer around the core (which only reads shards, token_files.py); its
command line is `python -m jaxgpt.prepare`, and launch.py calls it only for a
dataset that is missing.
"""
