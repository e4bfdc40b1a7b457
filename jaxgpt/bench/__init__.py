"""Benchmarks, one module per question; `python -m jaxgpt.bench` runs them (see __main__.py).

- throughput: ms/iter, tokens/s, MFU, compile time, memory and the input pipeline
  of the train step, optionally against the PyTorch peer (torch_peer);
- memory: what one micro-batch keeps for its backward pass, per remat policy;
- collectives: per-device memory and collective bytes under dp and fsdp;
- save_overhead: step time while an asynchronous checkpoint is written;
- decode: sampling tokens/s with the KV cache against recomputing;
- recipes: the nanoGPT and modern recipes (or each modern change alone) trained on one
  dataset: their losses and speed;
- gpu_report: the tests marked gpu, then the throughput and plan of each recipe and
  lever on this GPU, as the tables of docs/benchmarks.md.
"""
