"""The GPU path, compiled for NVIDIA targets on a machine without a GPU (deviceless, ahead of time).

Needs JAX's CUDA plugin (`pip install -e '.[cuda12]'`, no GPU or driver) and
skips without it; `python -m pytest -q -m gpu_compile` runs these (CI does,
in a virtual environment with the plugin). Each compile takes 5-15 s on 2
cores. What a run on the card relies on is read from the compiled program.
"""

from __future__ import annotations

import collections
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import recipe, run_python, setup_of, step_of

from jaxgpt import attention, sharding, train_step
from jaxgpt.bench import collectives
from jaxgpt.inference import decoding, scoring
from jaxgpt.model import GPT
from jaxgpt.plan import memory, targets

pytestmark = [pytest.mark.gpu_compile,
              pytest.mark.skipif(not targets.plugin_installed(),
                                 reason="needs JAX's CUDA plugin: pip install -e '.[cuda12]'")]

RECIPES = ("quickstart", "fineweb_40m", "fineweb_40m_modern", "gpt2_124m", "gpt2_124m_modern")
CARDS = ("RTX 4070", "H100")  # sm_89 and sm_90
GiB = 2**30


def on_card(name: str, card: str, kernel: str):
  """The recipe with its attention resolved as `kernel` ('auto': as it resolves on the card)."""
  config = recipe(name)
  if kernel == "cudnn" and config.dtype == "float32":
    pytest.skip("cuDNN's attention takes 16-bit activations: a float32 recipe runs XLA's")
  t = targets.target(card)
  config.attention = attention.resolve(kernel, config.dtype, config.n_embd // config.n_head,
                                       t.capability)
  return config, t


def hlo_dots(hlo: str) -> list[tuple[str, str, str]]:
  """The (operand dtypes, operand shapes, source op) of every matmul of a compiled GPU module:
  XLA's dots and cuBLAS calls, each operand typed where its computation defines it."""
  found = []
  types: dict[str, str] = {}
  for line in hlo.splitlines():
    if re.match(r"^(ENTRY )?%\S+ .*\{$", line):
      types = {}  # a new computation
    defined = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (\w+\[[\d,]*\])", line)
    if defined:
      types[defined[1]] = defined[2]
    call = re.search(r" (dot|custom-call)\((%[\w.\-]+), (%[\w.\-]+)", line)
    if call and (call[1] == "dot" or "__cublas" in line):
      operands = [types.get(op[1:], "?[]") for op in call.groups()[1:]]
      source = re.search(r'op_name="([^"]*)"', line)
      found.append((" x ".join(o.split("[")[0] for o in operands), " x ".join(operands),
                    source[1] if source else ""))
  return found


def big(operands: str) -> bool:
  """Both operands hold at least a million elements."""
  sizes = [int(np.prod([int(d) for d in dims.split(",") if d])) for dims in
           re.findall(r"\[([\d,]*)\]", operands)]
  return len(sizes) == 2 and min(sizes) >= 2**20


def donated_leaves(hlo: str) -> int:
  return len(re.findall(r"\(\d+, \{[\d,]*\}, (?:may|must)-alias\)", hlo.split("\n", 1)[0]))


@pytest.mark.parametrize("kernel", ["xla", "cudnn"])
@pytest.mark.parametrize("card", CARDS)
@pytest.mark.parametrize("name", RECIPES)
def test_every_recipes_train_step_compiles_for_the_card(name, card, kernel):
  config, t = on_card(name, card, kernel)
  compiled = memory.compile_for(step_of(config), t)
  hlo = compiled.as_text()
  state_leaves = len(jax.tree.leaves(setup_of(config).abstract_state))
  assert donated_leaves(hlo) == state_leaves  # the whole state is updated in place
  need = train_step.memory_need(compiled)
  assert need.arguments > 0 and need.total >= need.arguments
  if config.dtype == "bfloat16":
    T = config.block_size
    for dtypes, operands, source in hlo_dots(hlo):
      # The model's large matmuls, forward and backward, take bfloat16 operands, but XLA's own
      # attention differentiates its scores in float32 (jax.nn's formulation). (The optimizer's
      # are float32: Muon orthogonalises the float32 update.)
      scores = kernel == "xla" and f"{T},{T}" in operands
      if big(operands) and "GPT." in source and not scores:
        assert dtypes == "bf16 x bf16", (operands, source)
  if kernel == "cudnn":
    assert "__cudnn$fmha" in hlo


@pytest.mark.parametrize("kernel", ["xla", "cudnn"])
@pytest.mark.parametrize("card", CARDS)
@pytest.mark.parametrize("name", RECIPES)
def test_every_recipes_eval_step_compiles_for_the_card(name, card, kernel):
  config, t = on_card(name, card, kernel)
  device = targets.devices(t)[0]
  one = jax.sharding.SingleDeviceSharding(device)
  model = setup_of(config).model
  params = sharding.abstract_like(setup_of(config).abstract_state.params, one)
  batch = jax.ShapeDtypeStruct((config.batch_size, config.block_size + 1), np.uint16,
                               sharding=one)
  compiled = train_step.make_eval_step(model).lower(params, batch).compile()
  assert compiled.memory_analysis().argument_size_in_bytes > 0


@pytest.mark.parametrize("kernel", ["xla", "cudnn"])
@pytest.mark.parametrize("card", CARDS)
def test_cached_decoding_and_the_scoring_batch_compile_for_the_card(card, kernel):
  config, t = on_card("fineweb_40m", card, kernel)
  one = jax.sharding.SingleDeviceSharding(targets.devices(t)[0])
  model = GPT(setup_of(config).model.config)
  params = sharding.abstract_like(setup_of(config).abstract_state.params, one)
  spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=one)
  decode = decoding.generate_padded.lower(
      model, params, spec((4, 16), jnp.int32), spec((4,), jnp.int32),
      spec((2,), jnp.uint32), max_new_tokens=32, temperature=0.8, top_k=200, top_p=None,
      stop_token=None).compile()
  scorer = scoring.Scorer(model, rows_per_batch=8)
  batch = scorer.batches([(list(range(300)), 40)])[0]
  score = scorer._loss_sums.lower(params, *(spec(x.shape, x.dtype) for x in batch[1:])).compile()
  for compiled in (decode, score):  # both fit beside nothing else on the card
    assert 0 < train_step.memory_need(compiled).total < t.memory_bytes


@pytest.mark.parametrize("n_devices", [2, 8])
def test_data_parallel_step_all_reduces_its_gradients_once_per_iteration(n_devices):
  config, t = on_card("fineweb_40m", "H100", "auto")
  config.sharding = "dp"
  hlo = memory.compile_for(step_of(config), t, n_devices).as_text()
  sent = collectives.collectives(hlo, n_devices)
  params = sum(x.size for x in jax.tree.leaves(setup_of(config).abstract_state.params))
  one_gradient = 2 * (n_devices - 1) / n_devices * 4 * params  # a ring all-reduce of float32
  assert set(sent) == {"all-reduce"}
  assert one_gradient <= sent["all-reduce"] < 1.01 * one_gradient


@pytest.mark.parametrize("n_devices", [2, 6, 8])
def test_fsdp_step_gathers_params_and_keeps_a_share_of_the_state(n_devices):
  config, t = on_card("gpt2_124m", "H100", "auto")
  config.sharding = "fsdp"
  compiled = memory.compile_for(step_of(config), t, n_devices)
  sent = collectives.collectives(compiled.as_text(), n_devices)
  assert sent["all-gather"] > 0 and sent["reduce-scatter"] > 0
  params = setup_of(config).abstract_state.params
  lookups = params["wte"]["embedding"].size + params["wpe"]["embedding"].size
  rest = sum(x.size for x in jax.tree.leaves(params)) - lookups
  # Each matrix gathered once a micro-batch, in the dtype its use takes: the embeddings in
  # float32 (their lookups'), the rest in bfloat16 (their matmuls'): 4.27 GiB on 8 cards. The
  # lookup's gradient gathered the float32 sum of the gradients too (6.29 GiB). XLA split the
  # head's vocabulary and gathered each loss chunk's rows (11.6 GiB); before the chunks were
  # interleaved, each gathered the whole micro-batch's hidden states (175 GiB). On 6 cards 24
  # chunks, which did not divide each card's 32,768 rows, also gathered rows.
  once = (n_devices - 1) / n_devices * (4 * lookups + 2 * rest)
  assert sent["all-gather"] < 1.1 * config.gradient_accumulation_steps * once
  # Each gradient reduce-scattered once a micro-batch, in the same dtypes: 4.27 GiB on 8 cards.
  # The tied head's own sum of wte's gradient, reduced in its forward, took a float32
  # reduce-scatter of its own beside the lookup's (6.29 GiB).
  assert sent["reduce-scatter"] < 1.1 * config.gradient_accumulation_steps * once
  state = sum(x.size * x.dtype.itemsize
              for x in jax.tree.leaves(setup_of(config).abstract_state))
  # Every matrix is split: each device holds about 1/n of the params and Adam's moments.
  assert train_step.memory_need(compiled).arguments < 1.5 * state / n_devices


def test_the_user_layout_of_fineweb_40m_fits_an_rtx_4070_without_recomputing():
  config = recipe("fineweb_40m")
  assert (config.batch_size, config.gradient_accumulation_steps) == (16, 32)
  p = memory.gpu_plan(step_of(config), targets.target("RTX 4070"), fraction=0.75)
  assert p.fits and not p.recomputes
  assert 5 * GiB < p.need.total < 8 * GiB  # 6.77 GiB measured


def test_plan_cli_prints_the_plan_a_separate_compile_gives():
  r = run_python("-m", "jaxgpt.plan", "--config=configs/fineweb_40m.py", "--device=RTX 4070",
                 "--config.out_dir=/nonexistent", timeout=600,
                 XLA_CLIENT_MEM_FRACTION="0.75")
  assert r.returncode == 0, r.stderr[-3000:]
  line = next(x for x in r.stdout.splitlines() if x.startswith("memory: compiled for"))
  # the layout as the launch summary says it (32 accum x 16 batch x 1 device(s) x 1024 block)
  assert "NVIDIA GeForce RTX 4070 (sm_89; cudnn attention; 32 accum x 16 batch x 1024 block" in line
  printed = float(re.search(r"XLA plans ([\d.]+) GiB", line)[1])
  p = memory.gpu_plan(step_of(recipe("fineweb_40m")), targets.target("RTX 4070"), fraction=0.75)
  assert printed == pytest.approx(p.need.total / GiB, rel=0.03)
  assert "JAX will have 9.00 GiB (75% of 12 GiB" in line
  assert "memory: fits," in r.stdout and "not counted:" in r.stdout


def test_every_target_describes_its_card_as_jax_will_report_it():
  kinds = collections.Counter()
  for t in targets.TARGETS:
    device = targets.devices(t)[0]
    assert device.device_kind == t.device_kind and device.platform == "gpu"
    assert attention.capability(device) == t.capability
    kinds[t.device_kind] += 1
  assert max(kinds.values()) == 1
