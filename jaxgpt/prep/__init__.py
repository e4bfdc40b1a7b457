"""Corpus to token shards: readers, tokenizing in worker processes, shard writing, FineWeb.

A layer around the core (which only reads shards, token_files.py); its
command line is `python -m jaxgpt.prepare`; launch.py calls `datasets.ensure`
at every start, which makes a dataset only where it is missing.
"""
