"""The core and its layers as docs/design.md's table draws them, kept true by the imports."""

from __future__ import annotations

import ast
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
LIST_LOADED = "import sys, launch; print(*(m for m in sys.modules if m.startswith('jaxgpt.')))"


def core_in_design_doc() -> set[str]:
  """The modules of the core's table: the rows between 'The core' and 'The layers'."""
  text = (ROOT / "docs" / "design.md").read_text()
  table = text[text.index("The core, "):text.index("The layers, ")]
  return {f"jaxgpt.{name}" for name in re.findall(r"^\| `(\w+)\.py` \|", table, re.MULTILINE)}


def test_launch_imports_the_core_alone():
  """A plain `python launch.py` loads the core's modules and no layer (each comes only when
  a config key asks for it)."""
  loaded = subprocess.run(
      [sys.executable, "-c", LIST_LOADED], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
  assert set(loaded) == core_in_design_doc()


def test_no_core_module_imports_a_layer():
  """The core never reaches out to a layer, not even inside a function."""
  core = core_in_design_doc()
  reached = {}
  for module in core:
    path = ROOT / (module.replace(".", "/") + ".py")
    for node in ast.walk(ast.parse(path.read_text())):
      names = ([f"{node.module}.{a.name}" for a in node.names] + [node.module]
               if isinstance(node, ast.ImportFrom) and node.module else
               [a.name for a in node.names] if isinstance(node, ast.Import) else [])
      ours = {n for n in names if n.startswith("jaxgpt.") and n.count(".") == 1}
      reached[module] = reached.get(module, set()) | (ours - core)
  assert {m: sorted(r) for m, r in reached.items() if r} == {}
