"""The train state, the jitted train and eval steps, and `build`: the one maker of the model,
optimizer and state shapes, so that training, benchmarks, the plan and checkpoints agree."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P

from jaxgpt import defaults, sharding
from jaxgpt.errors import UserError
from jaxgpt.model import GPT, GPTConfig, init_params
from jaxgpt.optim import OptimConfig, lr_schedule, make_optimizer

Batch = jax.Array  # (accum_steps, batch_size, block_size + 1) token ids


class NonFiniteError(UserError, FloatingPointError):
  """More iterations with a non-finite loss or gradient than the run allows (skip_nonfinite)."""


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array  # iterations done
  params: Any
  opt_state: Any
  rng: jax.Array  # base key; step s uses fold_in(rng, s), so resuming needs nothing else
  nonfinite: jax.Array  # iterations whose update was dropped for a non-finite loss or gradient


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """What the train step is made of, read once from the config: the model, the optimizer,
  the seed and each device's batch (defaults.py says what each key means)."""

  model: GPTConfig
  optim: OptimConfig
  seed: int
  batch_size: int  # windows per device in a micro-batch
  gradient_accumulation_steps: int
  sharding: str  # dp | fsdp

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> StepConfig:
    return cls(GPTConfig.from_config(config), defaults.view(OptimConfig, config), config.seed,
               config.batch_size, config.gradient_accumulation_steps, config.sharding)

  def tokens_per_iter(self, n_devices: int) -> int:
    """Tokens per iteration: every micro-batch of every device, nanoGPT's definition."""
    return (self.gradient_accumulation_steps * self.batch_size * n_devices
            * self.model.block_size)

  def layout(self, mesh: jax.sharding.Mesh) -> sharding.BatchLayout:
    return sharding.BatchLayout(mesh, self.gradient_accumulation_steps, self.batch_size,
                                self.model.block_size)

  def with_layout(self, batch_size: int, gradient_accumulation_steps: int, remat: str
                  ) -> StepConfig:
    """The same step over another split of its tokens (`same_tokens_layouts`)."""
    return dataclasses.replace(self, batch_size=batch_size,
                               gradient_accumulation_steps=gradient_accumulation_steps,
                               model=dataclasses.replace(self.model, remat=remat))


@dataclasses.dataclass(frozen=True)
class TrainSetup:
  """The model, the optimizer and the shapes of their train state, made from `step`."""

  step: StepConfig
  model: GPT
  tx: optax.GradientTransformation
  abstract_state: TrainState  # jax.ShapeDtypeStructs: nothing allocated

  def new_state(self, params: Any = None) -> TrainState:
    """A fresh state: params from nanoGPT's init unless given (e.g. GPT-2's)."""
    init_rng, train_rng = jax.random.split(jax.random.PRNGKey(self.step.seed))
    params = init_params(self.model, init_rng) if params is None else jax.device_put(params)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=self.tx.init(params), rng=train_rng,
                      nonfinite=jnp.zeros((), jnp.int32))

  def host_lr(self, it: int) -> float:
    """The learning rate of iteration `it`: the step's own float32 formula, run on the host."""
    return float(lr_schedule(self.step.optim, np)(it))


def build(step: StepConfig) -> TrainSetup:
  setup = TrainSetup(step, GPT(step.model), make_optimizer(step.optim), abstract_state=None)
  return dataclasses.replace(setup, abstract_state=jax.eval_shape(setup.new_state))


def loss(model: GPT, params: Any, tokens_BT1: jax.Array, rng: jax.Array | None) -> jax.Array:
  """Mean next-token loss of (B, T+1) windows; dropout on when `rng` is given."""
  tokens_BT1 = tokens_BT1.astype(jnp.int32)
  train = rng is not None
  return model.apply({"params": params}, tokens_BT1[:, :-1], tokens_BT1[:, 1:], train=train,
                     rngs={"dropout": rng} if train else None, method=GPT.loss)


def _mean_grads(model: GPT, params: Any, tokens_ABT1: Batch, step_rng: jax.Array
                ) -> tuple[Any, jax.Array]:
  """Mean gradient and loss over the micro-batches, summed in float32 by a `lax.scan`."""
  grad_fn = jax.value_and_grad(lambda p, t, r: loss(model, p, t, r))

  def micro_step(grads_sum, xs):
    i, tokens_BT1 = xs
    value, grads = grad_fn(params, tokens_BT1, jax.random.fold_in(step_rng, i))
    return jax.tree.map(jnp.add, grads_sum, grads), value

  n_micro = tokens_ABT1.shape[0]
  zeros = jax.tree.map(jnp.zeros_like, params)
  grads_sum, losses_A = jax.lax.scan(micro_step, zeros, (jnp.arange(n_micro), tokens_ABT1))
  return jax.tree.map(lambda g: g / n_micro, grads_sum), losses_A.mean()


def _revert_unless_finite(finite: jax.Array, new: Any, old: Any) -> Any:
  """The optimizer state after a step: where the step was not finite, the old one but for
  the schedules' counters, which move on either way (each moment state, Adam's or Muon's,
  the NamedTuple holding `mu`, stays as it was, its own count included).

  A dropped update so leaves the optimizer as it was, while the learning rate and
  Muon's momentum stay those of the iteration, as the log says.
  """
  is_moments = lambda s: hasattr(s, "mu")

  def pick(path: tuple, n: Any, o: Any) -> Any:
    if is_moments(n) or getattr(path[-1], "name", None) != "count":
      return jax.tree.map(lambda a, b: jnp.where(finite, a, b), n, o)
    return n

  return jax.tree_util.tree_map_with_path(pick, new, old, is_leaf=is_moments)


def make_train_step(model: GPT, tx: optax.GradientTransformation,
                    out_shardings: Any = None, dp_mesh: jax.sharding.Mesh | None = None
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
  """A jitted, state-donating `train_step(state, batch)`: one iteration, k micro-batches of b
  as one update of a batch of k*b.

  A non-finite loss or gradient drops the update (counted in `state.nonfinite`), so it never
  reaches the params or a checkpoint. `out_shardings` (state, metrics) pins the new state
  where the old one was. With `dp_mesh` (replicated params) each device accumulates its
  share's gradients, averaged once per iteration, not per micro-batch as XLA would.
  """

  def train_step(state: TrainState, tokens_ABT1: Batch) -> tuple[TrainState, dict]:
    step_rng = jax.random.fold_in(state.rng, state.step)
    if dp_mesh is None:
      grads, value = _mean_grads(model, state.params, tokens_ABT1, step_rng)
    else:
      def local_then_mean(params, tokens_ABT1, rng):
        rng = jax.random.fold_in(rng, jax.lax.axis_index(sharding.DATA))  # own dropout masks
        return jax.lax.pmean(_mean_grads(model, params, tokens_ABT1, rng), sharding.DATA)

      # check_vma=False: with it, jax would psum the gradient of the replicated params
      # itself (a second all-reduce, and 8x the mean on 8 devices before the pmean).
      grads, value = jax.shard_map(local_then_mean, mesh=dp_mesh,
                                   in_specs=(P(), P(None, sharding.DATA), P()),
                                   out_specs=P(), check_vma=False)(state.params, tokens_ABT1,
                                                                   step_rng)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(value) & jnp.isfinite(grad_norm)
    new_state = state.replace(step=state.step + 1,
                              params=jax.tree.map(lambda n, o: jnp.where(finite, n, o),
                                                  params, state.params),
                              opt_state=_revert_unless_finite(finite, opt_state, state.opt_state),
                              nonfinite=state.nonfinite + (~finite).astype(jnp.int32))
    # nonfinite as of this step: the loop reads a step's metrics after the next one is queued.
    return new_state, {"loss": value, "grad_norm": grad_norm, "nonfinite": new_state.nonfinite}

  return jax.jit(train_step, donate_argnums=0, out_shardings=out_shardings)


def compile_train_step(setup: TrainSetup, mesh: jax.sharding.Mesh, state: Any = None
                       ) -> Callable:
  """The train step compiled ahead of time for `state` (from shapes alone where None: nothing
  allocated) and the step's batches, each placed on `mesh` as a run places it.

  A batch of another shape is then an error, never a silent recompile.
  """
  shardings = sharding.state_shardings(setup.abstract_state, mesh, setup.step.sharding)
  if state is None:
    state = sharding.abstract_like(setup.abstract_state, shardings)
  step = make_train_step(model_on(setup, mesh), setup.tx, (shardings, sharding.replicated(mesh)),
                         data_parallel(setup.step, mesh))
  return step.lower(state, setup.step.layout(mesh).train_spec).compile()


def compile_on(step: StepConfig, mesh: jax.sharding.Mesh) -> Any:
  """The train step of `step` as a run on `mesh` compiles it, from shapes alone: for its memory
  plan and its program."""
  return compile_train_step(build(step), mesh)


def data_parallel(step: StepConfig, mesh: jax.sharding.Mesh) -> jax.sharding.Mesh | None:
  """`mesh` where the params are replicated on several devices (dp), for the steps to map
  their work over it; else None."""
  return mesh if step.sharding == "dp" and mesh.size > 1 else None


def model_on(setup: TrainSetup, mesh: jax.sharding.Mesh) -> GPT:
  """The model as the steps run it on `mesh`: where XLA splits the batch over the devices
  (fsdp), its chunked loss takes interleaved chunks, each split like the rows (head_loss)."""
  return setup.model.clone(rows_on=mesh if setup.step.sharding == "fsdp" and mesh.size > 1
                           else None)


def make_eval_step(model: GPT, dp_mesh: jax.sharding.Mesh | None = None
                   ) -> Callable[[Any, jax.Array], jax.Array]:
  """A jitted mean loss of one (batch_size, block_size+1) batch, dropout off. With `dp_mesh`
  each device takes the loss of its share, averaged once: left to XLA, the chunked head's
  scan over the whole batch gathered it, and every device computed every chunk."""

  def eval_step(params: Any, tokens_BT1: jax.Array) -> jax.Array:
    if dp_mesh is None or tokens_BT1.shape[0] % dp_mesh.size:  # rows the devices cannot share
      return loss(model, params, tokens_BT1, None)
    local_then_mean = lambda p, t: jax.lax.pmean(loss(model, p, t, None), sharding.DATA)
    # check_vma=False: the head loss's scan carries are not typed as varying per device.
    return jax.shard_map(local_then_mean, mesh=dp_mesh, in_specs=(P(), P(sharding.DATA)),
                         out_specs=P(), check_vma=False)(params, tokens_BT1)

  return jax.jit(eval_step)


@dataclasses.dataclass(frozen=True)
class Need:
  """XLA's memory plan of a compiled step, per device, in bytes."""

  arguments: int  # params, optimizer state and the batch
  temporaries: int
  total: int  # the arguments, the outputs that do not reuse them, the temporaries


def memory_need(compiled: Any) -> Need:
  m = compiled.memory_analysis()
  return Need(m.argument_size_in_bytes, m.temp_size_in_bytes,
              m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
              + m.temp_size_in_bytes)


def same_tokens_layouts(batch_size: int, accum_steps: int) -> list[dict[str, Any]]:
  """Batch layouts of the same tokens per iteration, the likely fastest first.

  The micro-batch halves (accumulation doubling) while it divides evenly; every
  such layout without recomputation comes before any with remat 'dots', and
  those before 'full': a smaller micro-batch costs little, recomputing costs
  up to a third more FLOPs.
  """
  batches = [(batch_size, accum_steps)]
  while batches[-1][0] % 2 == 0:
    batch, accum = batches[-1]
    batches.append((batch // 2, accum * 2))
  return [{"batch_size": b, "gradient_accumulation_steps": a, "remat": remat}
          for remat in defaults.REMAT_POLICIES for b, a in batches]


UNKNOWN = -1  # the room where a device keeps no memory statistics (a CPU): no check


def device_room(state: TrainState) -> int:
  """Bytes the step may use on the fullest local device: the allocator's limit less what
  other arrays hold (the train state already there counts in the step's own need)."""
  rooms = []
  for device in jax.local_devices():
    stats = device.memory_stats()
    if not stats or "bytes_limit" not in stats:
      return UNKNOWN
    held = sum(shard.data.nbytes for leaf in jax.tree.leaves(state)
               for shard in leaf.addressable_shards if shard.device == device)
    rooms.append(stats["bytes_limit"] - stats["bytes_in_use"] + held)
  return min(rooms)


def fitting_layout(step: StepConfig, room: int, need_of: Callable[[StepConfig], int],
                   progress: Callable[[str], None] = lambda flags: None
                   ) -> tuple[str, int] | None:
  """The first of `same_tokens_layouts`, the step's own left out, whose step needs at most
  `room` bytes as `need_of` compiles it: its flags and its need; None when none does."""
  own = {"batch_size": step.batch_size,
         "gradient_accumulation_steps": step.gradient_accumulation_steps,
         "remat": step.model.remat}
  for layout in same_tokens_layouts(step.batch_size, step.gradient_accumulation_steps):
    if layout == own:
      continue
    flags = " ".join(f"--config.{k}={v}" for k, v in layout.items() if own[k] != v)
    progress(flags)
    need = need_of(step.with_layout(**layout))
    if need <= room:
      return flags, need
  return None


def check_memory(step: StepConfig, compiled: Any, state: TrainState,
                 mesh: jax.sharding.Mesh) -> None:
  """Stops before the first step when the compiled step will not fit the device's memory.

  XLA would otherwise fail mid-run with an out-of-memory traceback. The error
  names the need, the room and a layout that fits (`fitting_layout`, compiled
  on this device). Several processes decide alike, on the least room and the most need (each
  compiles its own plan, which mixed cards can make differ), skipping the check where any
  room is UNKNOWN: one that stopped alone left the others waiting at the first step.
  """
  room, need = device_room(state), memory_need(compiled).total
  if jax.process_count() > 1:
    # As int32 halves: without x64, JAX gathers an int64 as int32 (80 GiB as 0).
    pairs = np.array([room, need], np.int64).view(np.int32)
    rooms, needs = multihost_utils.process_allgather(pairs).view(np.int64).T
    room, need = UNKNOWN if UNKNOWN in rooms else int(rooms.min()), int(needs.max())
  if room == UNKNOWN or need <= room:
    return
  found = fitting_layout(step, room, lambda variant: memory_need(compile_on(variant, mesh)).total)
  fix = ("no smaller micro-batch or remat fits: pick a smaller model or block_size" if found is None
         else f"the same tokens per iteration fit with {found[0]} ({found[1] / 2**30:.2f} GiB)")
  device = (jax.local_devices()[0].device_kind if jax.process_count() == 1
            else "the fullest device of the processes")
  raise UserError(f"the train step needs {need / 2**30:.2f} GiB per device and {device} has "
                  f"{room / 2**30:.2f} GiB for it (JAX's share of the memory: "
                  f"XLA_CLIENT_MEM_FRACTION sets it); {fix}. Nothing was trained or "
                  "written.")
