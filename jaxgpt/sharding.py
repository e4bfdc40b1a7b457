"""Device mesh, partition specs and multi-host plumbing.

One mesh axis, `data`, spans every device of every process. Batches are split
over it; params and optimizer state are either replicated (`dp`) or split
over it too (`fsdp`: each matrix along its largest dimension that divides
evenly), and XLA inserts the all-gathers and reduce-scatters.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import os
import signal
import socket
import sys
import threading
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxgpt.errors import UserError

DATA = "data"


def maybe_initialize_distributed(coordinator_address: str = "", num_processes: int = 0,
                                 process_id: int = -1) -> None:
  """Joins the processes of a multi-host job before anything touches a device.

  Explicit arguments win; otherwise Open MPI jobs and SLURM steps (`srun`) of
  more than one task are detected from their environment (JAX reads the rest
  itself). A batch script's own shell is one process, whatever its allocation.
  """
  env = os.environ
  if "TORCHELASTIC_RUN_ID" in env and env.get("WORLD_SIZE", "1") != "1":  # nanoGPT's habit
    raise UserError(f"started by torchrun as one of {env['WORLD_SIZE']} processes, which do not "
                    "join: run `python launch.py ...` without torchrun, one process a host, which "
                    "drives all its GPUs (several hosts: the README's \"Several GPUs and hosts\")")
  kwargs: dict[str, Any] = {}
  if coordinator_address:
    kwargs["coordinator_address"] = coordinator_address
  if num_processes > 0:
    kwargs["num_processes"] = num_processes
  if process_id >= 0:
    kwargs["process_id"] = process_id
  address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS", "")  # JAX reads it too
  processes, one_per_node = _launcher()
  if not kwargs and processes <= 1:  # no explicit flags, no launcher of several
    if int(env.get("SLURM_NTASKS") or 1) > 1 and "SLURM_STEP_NUM_TASKS" not in env:
      logging.warning("a SLURM allocation of %s tasks, but this process was not started by srun: "
                      "it runs alone; `srun python launch.py ...` runs one process per task",
                      env["SLURM_NTASKS"])
    return
  # CPU devices need a collectives backend to talk across processes; GPUs ignore this.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  device_ids = _local_device_ids(one_per_node)
  if "OMPI_COMM_WORLD_SIZE" in env and "OMPI_MCA_orte_hnp_uri" not in env:
    # Open MPI 5's mpirun no longer says where it runs, which is all JAX's detection reads.
    if not address:
      raise UserError("an Open MPI 5 job: JAX cannot find process 0 from its environment; pass "
                      "--coordinator_address=HOST:PORT, rank 0's host and a free port")
    kwargs.setdefault("num_processes", int(env["OMPI_COMM_WORLD_SIZE"]))
    kwargs.setdefault("process_id", int(env["OMPI_COMM_WORLD_RANK"]))
    if device_ids is None and not one_per_node and "JAX_LOCAL_DEVICE_IDS" not in env:
      device_ids = [int(env["OMPI_COMM_WORLD_LOCAL_RANK"])]
  slurm_step = "OMPI_COMM_WORLD_SIZE" not in env and env.get("SLURM_STEP_ID", "").isdigit()
  if slurm_step and not address:  # JAX's port for step 0 (one of 4096, by job),
    # moved along for each later step: two steps of one allocation at once, on one node, would
    # both listen on it
    step = int(env["SLURM_JOB_ID"]) + 1013 * int(env["SLURM_STEP_ID"])
    env.setdefault("JAX_COORDINATOR_PORT", str(65536 - 4096 + step % 4096))
  if device_ids is not None:
    kwargs["local_device_ids"] = device_ids
    if one_per_node:
      logging.info("one process per node: it drives the node's %d GPUs", len(device_ids))
  _join(kwargs, address)
  check_equal_devices()  # before the first collective, which would fail on unequal shares


def _join(kwargs: dict[str, Any], address: str) -> None:
  """jax.distributed.initialize(**kwargs), the mistakes it reports said in one line."""
  env = os.environ
  port = address.rpartition(":")[2] or env.get("JAX_COORDINATOR_PORT", "")
  rank = kwargs.get("process_id", env.get("OMPI_COMM_WORLD_RANK", env.get("SLURM_PROCID")))
  if str(rank) == "0" and port.isdigit() and "JAX_COORDINATOR_BIND_ADDRESS" not in env:
    _check_port_free(int(port))  # JAX's service, where it is not, crashed half the time
  try:
    with _signals_end_at_once("waiting for the other processes to join"):
      jax.distributed.initialize(**kwargs)
  except ValueError as e:  # the flags JAX checks: a process_id past num_processes, say
    raise UserError(f"--coordinator_address/--num_processes/--process_id: {e}") from None
  except jax.errors.JaxRuntimeError as e:
    if "Failed to start RPC server" not in str(e):
      raise
    raise _port_in_use(port) from None  # where _check_port_free could not tell


def _check_port_free(port: int) -> None:
  """Refuses `port` where another program listens on it on this host: JAX's coordinator
  service, which binds every address, then ended in a traceback or a segmentation fault."""
  # "::" covers IPv4 too, as JAX's "[::]" does; "0.0.0.0" where the host has no IPv6.
  for family, address in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
    try:
      with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((address, port))
      return
    except OSError as e:
      if e.errno in (errno.EADDRINUSE, errno.EACCES):
        raise _port_in_use(str(port)) from None
      # else (no such address family here, say) the next, and past the last JAX finds out


def _port_in_use(port: str) -> UserError:
  """`port`: '' where JAX picked it (Open MPI 4 without JAX_COORDINATOR_PORT, say)."""
  return UserError(f"process 0 cannot listen on {f'port {port}' if port else 'its port'} for "
                   "the others (another program holds it, another run's process 0 say, or it "
                   "is reserved); name a free one with --coordinator_address=HOST:PORT, or "
                   "JAX_COORDINATOR_PORT in a SLURM or Open MPI job")


@contextlib.contextmanager
def _signals_end_at_once(doing: str) -> Iterator[None]:
  """Within, SIGTERM and Ctrl-C end the process at once with one line, and exit 128 + the
  signal. JAX waits for the other processes (up to 5 minutes) inside XLA, where Python's
  handlers (launch.py's, which keep a stop for later) never run: the process went on waiting,
  and then aborted. Python's C handler writes each signal to the wakeup fd, which a thread
  watches."""
  if threading.current_thread() is not threading.main_thread():  # set_wakeup_fd's rule
    yield
    return
  read, write = os.pipe()
  os.set_blocking(write, False)
  previous = signal.set_wakeup_fd(write, warn_on_full_buffer=False)

  def watch() -> None:
    while got := os.read(read, 1):  # b"" once `write` is closed
      if got[0] in (signal.SIGINT, signal.SIGTERM):
        print(f"stopped by {signal.Signals(got[0]).name} {doing}: nothing to save",
              file=sys.stderr, flush=True)
        os._exit(128 + got[0])

  watcher = threading.Thread(target=watch, name="signals-end-at-once", daemon=True)
  watcher.start()
  try:
    yield
  finally:
    signal.set_wakeup_fd(previous)
    os.close(write)
    watcher.join()
    os.close(read)


def _launcher() -> tuple[int, bool]:
  """(processes, one per node) of the job that started this process: (1, False) for none.

  Open MPI's first, as JAX's detection does: `mpirun` inside a SLURM allocation hands its
  ranks the SLURM variables of the shell or daemon that started them too.
  """
  env = os.environ
  if "OMPI_COMM_WORLD_SIZE" in env:
    return int(env["OMPI_COMM_WORLD_SIZE"]), env.get("OMPI_COMM_WORLD_LOCAL_SIZE") == "1"
  if "SLURM_STEP_NUM_TASKS" in env:
    tasks = env["SLURM_STEP_NUM_TASKS"]
    return int(tasks), tasks == env.get("SLURM_STEP_NUM_NODES")
  return 1, False


NVIDIA_GPUS_DIR = "/proc/driver/nvidia/gpus"  # one entry per GPU the driver shows this process


def _local_device_ids(one_per_node: bool) -> list[int] | None:
  """The GPUs this process drives, where JAX's detection would pick wrong: it gives each
  process the GPU of its local rank. One process per node drives every GPU of the node
  (CUDA_VISIBLE_DEVICES, else the driver's list); a process that sees one GPU drives that one,
  0 (SLURM's --gpus-per-task=1 renumbers it so). None: JAX's choice, or JAX_LOCAL_DEVICE_IDS."""
  if "JAX_LOCAL_DEVICE_IDS" in os.environ:
    return None
  visible = os.environ.get("CUDA_VISIBLE_DEVICES")
  if visible is not None:
    gpus = len([g for g in visible.split(",") if g.strip()])
  else:
    gpus = len(os.listdir(NVIDIA_GPUS_DIR)) if os.path.isdir(NVIDIA_GPUS_DIR) else 0
  if one_per_node and gpus:
    return list(range(gpus))
  return [0] if gpus == 1 else None


class FailedElsewhere(UserError):
  """Another process failed where this one did not; that process's own error says why."""


def agree(what: str, action: Callable[..., Any], *args: Any) -> tuple[Exception | None, Any]:
  """(None, what `action(*args)` returns) where it succeeded on every process; else why not
  (its own exception, or `FailedElsewhere` naming `what` and the processes that failed) and
  what it returned here (None where it raised).

  Every process calls it, so all take the same branch after it: one that fails
  alone (a file only it reads, a library only process 0 loads) cannot leave the
  others waiting at the run's next collective.
  """
  try:
    value, error = action(*args), None
  except Exception as e:  # noqa: BLE001 - the caller decides what each failure means
    value, error = None, e
  if jax.process_count() > 1:
    everyone = multihost_utils.process_allgather(np.int32(error is None))
    if error is None and not np.all(everyone):
      failed = np.flatnonzero(everyone == 0).tolist()
      error = FailedElsewhere(f"{what} failed on process(es) {failed}, whose error says why")
  return error, value


def agreed(what: str, action: Callable[..., Any], *args: Any) -> Any:
  """What `action(*args)` returns where it succeeded on every process; else raises `agree`'s
  error."""
  error, value = agree(what, action, *args)
  if error is not None:
    raise error
  return value


def make_mesh() -> Mesh:
  """A 1-D `data` mesh over all devices, with Auto axis types.

  (`jax.make_mesh` now defaults to Explicit axes, under which the embedding
  gather fails to shard; the plain constructor keeps Auto.)
  """
  check_equal_devices()
  return Mesh(np.array(jax.devices()), (DATA,))


def check_equal_devices() -> None:
  """Every process drives as many devices: each reads an equal share of every batch."""
  per_process = collections.Counter(d.process_index for d in jax.devices())
  if len(set(per_process.values())) > 1:
    counts = ", ".join(f"process {p}: {n}" for p, n in sorted(per_process.items()))
    raise UserError(f"the processes drive different numbers of devices ({counts}); each reads "
                    "an equal share of every batch, so give each process as many GPUs")


def check_same(values: dict[str, Any], error: str) -> None:
  """Stops every process where `values` (each process's own) differ between them, with
  `error` naming the `{keys}` that do."""
  if jax.process_count() == 1:
    return
  keys = sorted(values)
  digests = np.array([zlib.crc32(repr(values[k]).encode()) & 0x7FFFFFFF for k in keys], np.int32)
  everyone = multihost_utils.process_allgather(digests)  # (processes, keys)
  differ = [k for k, column in zip(keys, everyone.T) if len(set(column.tolist())) > 1]
  if differ:
    raise UserError(error.replace("{keys}", ", ".join(differ)))


def batch_sharding(mesh: Mesh, ndim: int, batch_axis: int) -> NamedSharding:
  """Splits `batch_axis` of an ndim-array over the data axis; other axes replicated."""
  return NamedSharding(mesh, P(*[DATA if a == batch_axis else None for a in range(ndim)]))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def leaf_spec(shape: tuple[int, ...], n_shards: int, mode: str) -> P:
  """Where one param or optimizer-state leaf lives.

  fsdp splits a matrix along its largest dimension that `n_shards` divides;
  vectors, scalars and indivisible matrices stay replicated.
  """
  if mode == "dp" or len(shape) < 2 or n_shards == 1:
    return P()
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % n_shards == 0:
      return P(*[DATA if a == axis else None for a in range(len(shape))])
  return P()


def state_shardings(abstract_state: Any, mesh: Mesh, mode: str) -> Any:
  """NamedShardings for every leaf of a (abstract) train state.

  Adam's moments have their param's shape, so they land where their param does.
  """
  n = mesh.shape[DATA]
  return jax.tree.map(lambda x: NamedSharding(mesh, leaf_spec(x.shape, n, mode)), abstract_state)


def abstract_like(tree: Any, shardings: Any) -> Any:
  """Shape/dtype structs of `tree` placed per `shardings` (one, or a matching tree).

  The target of a restore (Orbax reads each array straight into its place,
  whatever the device count of the run that saved it) and of an ahead-of-time
  compile.
  """
  if isinstance(shardings, jax.sharding.Sharding):
    shardings = jax.tree.map(lambda _: shardings, tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


@dataclasses.dataclass(frozen=True)
class BatchLayout:
  """How a batch is split: micro-batches over every device of every process.

  Each process reads `local_batch` windows per micro-batch (its devices' share)
  and the global array is assembled from all processes' pieces (JAX infers its shape).
  """

  mesh: Mesh
  accum_steps: int
  batch_size: int  # per device
  block_size: int

  @property
  def n_devices(self) -> int:
    return self.mesh.size

  @property
  def local_batch(self) -> int:
    return self.batch_size * jax.local_device_count()

  @property
  def global_batch(self) -> int:
    return self.batch_size * self.n_devices

  @property
  def train_spec(self) -> jax.ShapeDtypeStruct:
    """The global (accum, batch, block+1) uint16 batch the train step is compiled for."""
    return jax.ShapeDtypeStruct((self.accum_steps, self.global_batch, self.block_size + 1),
                                np.uint16, sharding=batch_sharding(self.mesh, 3, 1))

  def train_batch(self, local_ABT1: np.ndarray) -> jax.Array:
    return jax.make_array_from_process_local_data(batch_sharding(self.mesh, 3, 1), local_ABT1)

  def eval_batch(self, local_BT1: np.ndarray) -> jax.Array:
    return jax.make_array_from_process_local_data(batch_sharding(self.mesh, 2, 0), local_BT1)

  def replicated(self, whole: np.ndarray) -> jax.Array:
    """An array every process holds whole, on every device."""
    return jax.make_array_from_process_local_data(replicated(self.mesh), whole)
