"""Per-device memory and collective traffic of the train step under dp and fsdp.

Compiled for every device the process sees (simulate 8 on a CPU with
XLA_FLAGS=--xla_force_host_platform_device_count=8); the bytes each collective
sends are read from the compiled HLO text.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any

import numpy as np

from jaxgpt import sharding, train_step
from jaxgpt.errors import UserError

_COLLECTIVE_OP = re.compile(r"= (.*?) (all-reduce|all-gather|reduce-scatter|all-to-all|"
                            r"collective-permute)(-start)?\(")
_ARRAY = re.compile(r"\b(pred|[subf]\d+|bf16)\[([\d,]*)\]")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$")
_WHILE_BODY = re.compile(r"\bwhile\(.*\bbody=%?([\w.\-]+)")
_KNOWN_TRIPS = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
_OP_NAME = re.compile(r'op_name="([^"]+)"')
_CALLED = re.compile(r"(?:to_apply|calls|body|condition|true_computation|false_computation)="
                     r"%?([\w.\-]+)|branch_computations=\{([^}]*)\}")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4,
          "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8}


def _result_bytes(result_type: str, op: str, started: bool) -> int:
  # A start typed ((operands), results) holds each array twice: its results alone count.
  if started and (op in ("all-gather", "collective-permute") or result_type.startswith("((")):
    result_type = _top_level(result_type)[1]
  return sum(_BYTES[dtype] * int(np.prod([int(d) for d in dims.split(",") if d]))
             for dtype, dims in _ARRAY.findall(result_type))


def _top_level(tuple_type: str) -> list[str]:
  """The elements of a tuple type: an asynchronous all-gather's or collective-permute's start
  is typed (operands, results, ...) on a GPU, a reduce-scatter's ((operands), results), an
  all-reduce's as its results (jaxlib 0.10) or as a reduce-scatter's (0.11)."""
  parts, depth, begin = [], 0, 1
  for i, ch in enumerate(tuple_type):
    depth += (ch in "([{") - (ch in ")]}")
    if (ch == "," and depth == 1) or depth == 0:
      parts.append(tuple_type[begin:i].strip())
      begin = i + 1
    if depth == 0:
      break
  return parts


def _sent_bytes(op: str, result: int, n: int) -> float:
  """Bytes one device sends for a collective over n devices, by the ring algorithm."""
  return {"all-reduce": 2 * (n - 1) / n * result, "all-gather": (n - 1) / n * result,
          "reduce-scatter": (n - 1) * result, "all-to-all": (n - 1) / n * result}.get(op, result)


def collectives(hlo_text: str, n_devices: int) -> dict[str, float]:
  """Bytes each device sends per iteration, by collective kind, from compiled HLO text.

  A computation counts as often as it runs: a while loop's body once per trip
  (the count XLA annotates, `known_trip_count`), so a loop inside the
  micro-batch loop (the chunked loss's scan) counts micro-batches x chunks; a
  conditional's branches each count as if taken. A loop XLA leaves without the
  count (Muon's Newton-Schulz iterations) matters only where it holds a collective: then the
  bytes are unknown, an error that says so.
  """
  ops: dict[str, list[tuple[str, int]]] = {}
  callers: dict[str, list[tuple[str, str]]] = {}  # computation -> (caller, the calling line)
  entry = current = ""
  for line in hlo_text.splitlines():
    header = _COMPUTATION.match(line)
    if header:
      current = header.group(1)
      entry = current if line.startswith("ENTRY") else entry
      continue
    body = _WHILE_BODY.search(line)
    for one, branches in _CALLED.findall(line):  # a conditional's branches: each as if taken
      for callee in [one] if one else [b.strip().lstrip("%") for b in branches.split(",")]:
        callers.setdefault(callee, []).append(
            (current, line if body and callee == body.group(1) else ""))
    op = _COLLECTIVE_OP.search(line)
    if op:
      ops.setdefault(current, []).append(
          (op.group(2), _result_bytes(op.group(1), op.group(2), bool(op.group(3)))))

  @functools.cache
  def runs(computation: str) -> int:
    return 1 if computation == entry else sum(
        runs(caller) * (_trips(while_line) if while_line else 1)
        for caller, while_line in callers.get(computation, ()))

  sent: dict[str, float] = {}
  for computation, found in ops.items():
    if not runs(computation):
      raise ValueError(f"collectives in {computation}, which no call from the entry reaches")
    for kind, result in found:
      sent[kind] = sent.get(kind, 0.0) + runs(computation) * _sent_bytes(kind, result, n_devices)
  return sent


class UncountedLoop(UserError):
  """Collectives in a loop XLA gives no trip count: their bytes per iteration are unknown."""


def _trips(while_line: str) -> int:
  trips = _KNOWN_TRIPS.search(while_line)
  if trips is None:
    op = _OP_NAME.search(while_line)
    raise UncountedLoop(f"collectives in a while loop XLA gives no trip count "
                        f"({op.group(1) if op else 'unnamed'}; Muon's Newton-Schulz "
                        "iterations under fsdp, say): not counted")
  return int(trips.group(1))


def sharding_report(step: train_step.StepConfig, mode: str) -> dict[str, Any]:
  """Per-device memory and collective traffic of the train step over every device."""
  step = dataclasses.replace(step, sharding=mode)
  layout = step.layout(sharding.make_mesh())
  compiled = train_step.compile_on(step, layout.mesh)
  memory = compiled.memory_analysis()
  return {"mode": mode, "devices": layout.n_devices, "batch_per_device": step.batch_size,
          "gradient_accumulation_steps": layout.accum_steps,
          "argument_bytes": memory.argument_size_in_bytes,
          "temp_bytes": memory.temp_size_in_bytes,
          "sent_bytes_per_iter": collectives(compiled.as_text(), layout.n_devices)}
