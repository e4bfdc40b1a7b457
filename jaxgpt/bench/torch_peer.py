"""The PyTorch peer of `python -m jaxgpt.bench`: the same GPT, tokens per step and AdamW.

The peer is the strongest setup a user would pick instead of jaxgpt:
transformers' `GPT2LMHeadModel` with SDPA (flash) attention, `torch.compile`,
bf16 autocast and fused AdamW. GPT-2's module always carries biases; with
jaxgpt's `bias=False` they are removed (bias-free `nn.Linear` projections,
LayerNorms without a shift), so both models hold the same parameters.

torch and transformers are imported on first use: jaxgpt itself needs neither.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ml_collections

from jaxgpt import defaults
from jaxgpt.errors import UserError
from jaxgpt.model import GPTConfig
from jaxgpt.optim import OptimConfig

if TYPE_CHECKING:
  import torch


def _import_torch() -> tuple[Any, Any]:
  try:
    import torch
    import transformers
  except ImportError as e:
    raise UserError(
        f"the PyTorch peer needs torch and transformers ({e}); install them with "
        "`pip install torch transformers` (a CUDA build of torch to benchmark a GPU)") from e
  return torch, transformers


def peer_device() -> str:
  """The device the peer runs on: CUDA where torch sees it, else the CPU."""
  torch, _ = _import_torch()
  return "cuda" if torch.cuda.is_available() else "cpu"


def build_model(config: GPTConfig, seed: int, device: str) -> torch.nn.Module:
  """GPT2LMHeadModel with the model's shape, nanoGPT's init and SDPA attention."""
  torch, transformers = _import_torch()
  from transformers.pytorch_utils import Conv1D

  torch.manual_seed(seed)
  gpt2_config = transformers.GPT2Config(
      vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
      n_layer=config.n_layer, n_head=config.n_head, layer_norm_epsilon=1e-5,
      resid_pdrop=config.dropout, embd_pdrop=config.dropout, attn_pdrop=config.dropout,
      # Same function as jaxgpt's GELU: exact erf, or the tanh form in torch's fused kernel.
      activation_function="gelu_pytorch_tanh" if config.gelu_approximate else "gelu",
      tie_word_embeddings=config.tie_embeddings, use_cache=False, attn_implementation="sdpa")
  model = transformers.GPT2LMHeadModel(gpt2_config)
  if not config.bias:
    for module in list(model.modules()):
      for name, child in list(module.named_children()):
        if isinstance(child, Conv1D):  # weight (in, out) + bias -> bias-free Linear, same init
          linear = torch.nn.Linear(child.nx, child.nf, bias=False)
          with torch.no_grad():
            linear.weight.copy_(child.weight.T)
          setattr(module, name, linear)
        elif isinstance(child, torch.nn.LayerNorm):
          child.register_parameter("bias", None)
  return model.to(device)


def count_params(model: torch.nn.Module) -> int:
  """All parameters, a tied embedding and head once: jaxgpt's count with position embeddings."""
  return sum(p.numel() for p in model.parameters())


def _loss_fn(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
  torch, _ = _import_torch()

  def loss(tokens_BT1: torch.Tensor) -> torch.Tensor:
    logits_BTV = model(input_ids=tokens_BT1[:, :-1]).logits
    return torch.nn.functional.cross_entropy(logits_BTV.flatten(0, 1).float(),
                                             tokens_BT1[:, 1:].flatten())

  return loss


def loss(model: torch.nn.Module, tokens_BT1: torch.Tensor) -> float:
  """Mean next-token loss of one (batch, block_size + 1) batch, in float32, dropout off."""
  torch, _ = _import_torch()
  model.eval()
  with torch.no_grad():
    value = float(_loss_fn(model)(tokens_BT1))
  model.train()
  return value


def make_train_step(model: torch.nn.Module, config: OptimConfig, dtype: str, device: str,
                    compile: bool) -> Callable[[torch.Tensor], torch.Tensor]:
  """One iteration as jaxgpt's step does it: every micro-batch, clipping, then AdamW."""
  torch, _ = _import_torch()
  params = list(model.parameters())
  groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
  optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, betas=(config.beta1, config.beta2),
                                eps=1e-8, fused=device == "cuda")
  loss_fn = _loss_fn(model)
  if compile:
    loss_fn = torch.compile(loss_fn)
  autocast = dtype == "bfloat16" and device == "cuda"

  def train_step(tokens_ABT1: torch.Tensor) -> torch.Tensor:
    n_micro = tokens_ABT1.shape[0]
    for tokens_BT1 in tokens_ABT1:
      with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
        loss = loss_fn(tokens_BT1)
      (loss / n_micro).backward()
    if config.grad_clip > 0:
      torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()

  model.train()
  return train_step


def measure(config: ml_collections.ConfigDict, *, iters: int, warmup: int,
            compile: bool | None) -> dict[str, Any]:
  """Times `iters` iterations after `warmup` on CUDA when torch sees it, else on the CPU.

  `compile` None compiles on CUDA only (compiling for the CPU takes long).
  Returns every cached byte to the driver at the end, so JAX can allocate its
  usual share of the GPU afterwards.
  """
  torch, transformers = _import_torch()
  device = peer_device()
  compile = device == "cuda" if compile is None else compile
  model = build_model(GPTConfig.from_config(config), config.seed, device)
  train_step = make_train_step(model, defaults.view(OptimConfig, config), config.dtype, device,
                               compile)
  generator = torch.Generator(device=device).manual_seed(config.seed)
  tokens_ABT1 = torch.randint(
      0, config.vocab_size,
      (config.gradient_accumulation_steps, config.batch_size, config.block_size + 1),
      generator=generator, device=device)
  result = _time(train_step, tokens_ABT1, iters=iters, warmup=warmup, device=device)
  result.update(
      torch_version=torch.__version__, transformers_version=transformers.__version__,
      compile=compile, autocast_bf16=config.dtype == "bfloat16" and device == "cuda",
      fused_adamw=device == "cuda", n_params=count_params(model))
  del model, train_step, tokens_ABT1  # their memory (AdamW's state too) is free to give back
  torch.compiler.reset()
  gc.collect()  # what torch.compile's caches held in cycles
  if device == "cuda":
    torch.cuda.empty_cache()
  return result


def _time(train_step: Callable, tokens_ABT1: torch.Tensor, *, iters: int, warmup: int,
          device: str) -> dict[str, Any]:
  """The first step's seconds (compilation included), then `iters` timed after `warmup`."""
  torch, _ = _import_torch()
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
  t0 = time.perf_counter()
  train_step(tokens_ABT1)
  sync()
  first_step_s = time.perf_counter() - t0
  for _ in range(warmup - 1):
    train_step(tokens_ABT1)
  sync()
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    last_loss = train_step(tokens_ABT1)
    sync()
    times.append(time.perf_counter() - t0)
  return {
      "device": device,
      "device_name": torch.cuda.get_device_name() if device == "cuda" else "cpu",
      "first_step_s": first_step_s,
      "ms_per_iter_median": 1000 * statistics.median(times),
      "ms_per_iter_mean": 1000 * statistics.mean(times),
      "peak_memory_bytes": torch.cuda.max_memory_allocated() if device == "cuda" else None,
      "last_loss": float(last_loss),
  }
