"""The layout's promises: data flows one way between the layers, the core imports neither
torch nor ASE, and each path runs with only the packages its extra installs."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src" / "ltau"
LAYERS = ("core", "atomistic", "integrations", "demo", "cli")
"""Lowest first: a module may import its own layer and the ones before it, never later ones."""
LAYER_MODULES = {"atomistic", "integrations", "demo", "cli"}


def layer_of(module: str) -> str:
    """``ltau.x.y`` -> its layer; everything not in a layer package is the core."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYER_MODULES else "core"


def module_name(path: Path) -> str:
    relative = path.relative_to(SOURCE.parent).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(parts)


def ltau_imports(path: Path) -> set[str]:
    """Every ``ltau`` module that ``path`` imports, at any depth of its code."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names if alias.name.startswith("ltau")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.startswith("ltau"):
                imported.add(node.module)
    return imported


def test_layers_import_only_lower_layers():
    violations = []
    for path in sorted(SOURCE.rglob("*.py")):
        name = module_name(path)
        rank = LAYERS.index(layer_of(name))
        for target in ltau_imports(path):
            if LAYERS.index(layer_of(target)) > rank:
                violations.append(f"{name} imports {target}")
    assert not violations, violations


def test_layer_check_sees_a_violation(tmp_path):
    """The check above would catch a core module importing an integration."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from ltau.integrations.mace import train_mace\n")
    assert ltau_imports(bad) == {"ltau.integrations.mace"}
    assert LAYERS.index(layer_of("ltau.integrations.mace")) > LAYERS.index(layer_of("ltau.search"))


BLOCKER = """
import importlib.abc, sys
BLOCKED = set({blocked!r})
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is blocked: not installed by this extra")
sys.meta_path.insert(0, Block())
import importlib
for module in {modules!r}:
    importlib.import_module(module)
loaded = sorted({{m.split(".")[0] for m in sys.modules}} & BLOCKED)
assert not loaded, loaded
"""


def import_without(modules: list[str], blocked: set[str]) -> subprocess.CompletedProcess:
    """Import ``modules`` in a fresh interpreter where the ``blocked`` packages do not exist."""
    code = BLOCKER.format(blocked=sorted(blocked), modules=modules)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


HEAVY = {"torch", "ase", "mace", "e3nn", "nequip", "lightning", "matplotlib", "sklearn", "ray"}


def core_modules() -> list[str]:
    return [
        module_name(path)
        for path in sorted(SOURCE.rglob("*.py"))
        if layer_of(module_name(path)) in ("core", "cli") and path.stem != "__main__"
    ]


def test_core_and_cli_import_with_only_the_core_dependencies():
    result = import_without(core_modules(), HEAVY)
    assert result.returncode == 0, result.stderr[-2000:]


def test_blocker_does_block():
    """A module that needs a blocked package fails to import: the checks above can fail."""
    result = import_without(["ltau.integrations.torch"], {"torch"})
    assert result.returncode != 0 and "torch is blocked" in result.stderr


def example_imports(path: Path) -> list[str]:
    """The ltau modules an example script imports."""
    return sorted(ltau_imports(path))


@pytest.mark.parametrize(
    "modules",
    [
        ["ltau.integrations.torch", "ltau.integrations.lightning", "ltau.demo.tabular"],
        example_imports(SOURCE.parents[1] / "examples" / "lightning_regression.py"),
    ],
    ids=["tabular-demo", "lightning-example"],
)
def test_lightning_path_needs_no_ase_or_mace(modules):
    """What the 'lightning' extra installs (torch, lightning, scikit-learn, matplotlib) is
    enough for the tabular demo and the Lightning example."""
    result = import_without(modules, {"ase", "mace", "e3nn", "nequip"})
    assert result.returncode == 0, result.stderr[-2000:]


def test_ray_path_needs_no_torch_ase_or_mace():
    """The 'ray' extra (ray on top of the core) is enough for the sharded index."""
    result = import_without(
        ["ltau.integrations.ray_index"], {"torch", "ase", "mace", "e3nn", "nequip", "lightning"}
    )
    assert result.returncode == 0, result.stderr[-2000:]
