"""The layers hold: import-linter's contracts (pyproject.toml) pass, the README shows the same layer
list, and no import hides inside a function except the few allow-listed below, each with its reason."""

from __future__ import annotations

import ast
import fnmatch
import os
import re
import subprocess
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: import-linter brings tomli
    import tomli as tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLI_START_UP = "CLI start-up: `memfactory --help` and each command load only what that command runs"

# (file pattern, imported module pattern) -> why a project-internal import may sit inside a function.
# Only two reasons are good enough: deferring a heavy or optional package, and CLI start-up speed.
ALLOWED: dict[tuple[str, str], str] = {
    ("memfactory/commands/*.py", "memfactory*"): CLI_START_UP,
    ("memfactory/planner/costs.py", "memfactory.trainer.precision"): (
        "defers torch: trainer.precision imports it at the top, while `memfactory plan` and the Assemble tab "
        "import the planner without it (torch loads when a plan is computed)"),
    ("memfactory/planner/costs.py", "memfactory.trainer.optimizer"): (
        "defers torch as trainer.precision above: the planner reads the AdamW implementation the trainer builds"),
    ("memfactory/planner/plan.py", "memfactory.backends.vllm_engine"): (
        "defers torch: the vLLM backend builds on the hf backend (torch at the top); only a preset whose "
        "rollout engine is vllm needs its sizing"),
    ("webui/__init__.py", "webui.app"): (
        "defers gradio: `import webui` (sharing, workspace, launch_command, used before any UI exists) must "
        "not import it"),
    ("app.py", "webui.app"): "defers gradio until the launch plan passed: a refused launch exits at once",
}
STDLIB = set(sys.stdlib_module_names)


@dataclass(frozen=True)
class NestedImport:
    path: str
    line: int
    module: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line} imports {self.module} inside a function"


def _sources() -> list[Path]:
    return sorted([*ROOT.glob("memfactory/**/*.py"), *ROOT.glob("webui/**/*.py"), ROOT / "app.py"])


def nested_imports() -> list[NestedImport]:
    """Every import statement inside a function (at any depth) of the package, the UI and app.py."""
    found = []
    for file in _sources():
        rel = file.relative_to(ROOT).as_posix()
        tree = ast.parse(file.read_text(encoding="utf-8"), rel)
        functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        seen: set[int] = set()
        for function in functions:
            for node in ast.walk(function):
                if id(node) in seen or not isinstance(node, (ast.Import, ast.ImportFrom)):
                    continue
                seen.add(id(node))
                if isinstance(node, ast.ImportFrom):
                    modules = ["." * node.level + (node.module or "")]
                else:
                    modules = [alias.name for alias in node.names]
                found += [NestedImport(rel, node.lineno, module) for module in modules]
    return found


def _internal(module: str) -> bool:
    return module.startswith((".", "memfactory", "webui"))


def _allowed_by(item: NestedImport) -> tuple[str, str] | None:
    for key in ALLOWED:
        path_pattern, module_pattern = key
        if fnmatch.fnmatch(item.path, path_pattern) and fnmatch.fnmatch(item.module, module_pattern):
            return key
    return None


def test_project_imports_inside_functions_are_allow_listed_with_a_reason():
    internal = [item for item in nested_imports() if _internal(item.module)]
    unexplained = [str(item) for item in internal if _allowed_by(item) is None]
    assert not unexplained, (
        "import these at the top of the module (a cycle or an upward import is fixed by moving code to the "
        "right layer, not by hiding the import), or add an ALLOWED entry if it defers a heavy or optional "
        "package or keeps CLI start-up fast:\n" + "\n".join(unexplained))
    used = {_allowed_by(item) for item in internal}
    stale = [key for key in ALLOWED if key not in used]
    assert not stale, f"ALLOWED entries that no import needs any more: {stale}"
    assert all(reason.strip() for reason in ALLOWED.values())


def test_no_standard_library_import_inside_a_function():
    # the standard library costs nothing worth deferring; an import inside a function only hides it
    inside = [str(item) for item in nested_imports() if item.module.split(".")[0] in STDLIB]
    assert not inside, "\n".join(inside)


def test_the_nested_import_finder_sees_what_it_should(tmp_path):
    # the finder itself: depth, methods, relative imports; module-level imports are not reported
    source = ("import os\nfrom memfactory import errors\n"
              "def f():\n    from memfactory.config import Preset\n    def g():\n        import webui.app\n"
              "class C:\n    async def m(self):\n        from . import x\n")
    tree = ast.parse(source)
    nodes = [n for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert sorted({n.lineno for n in nodes}) == [4, 6, 9]
    assert _allowed_by(NestedImport("memfactory/commands/x.py", 1, "memfactory.config")) is not None
    assert _allowed_by(NestedImport("memfactory/config/load.py", 1, "memfactory.registry")) is None


# --------------------------------------------------------------------------- import-linter's contracts


def _contracts() -> list[dict]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return config["tool"]["importlinter"]["contracts"]


def test_the_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    assert lint.exists(), "import-linter is a dev dependency: pip install -e '.[dev]'"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # analyse this checkout, not an installed copy
    done = subprocess.run([str(lint), "--no-cache", "--no-logo"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    report = done.stdout + done.stderr
    assert done.returncode == 0, report
    assert f"Contracts: {len(_contracts())} kept, 0 broken." in report, report


def test_the_contracts_cover_layers_cycles_and_the_ui():
    kinds = {c["type"]: c for c in _contracts()}
    assert {"layers", "forbidden", "acyclic_siblings"} <= set(kinds)
    assert kinds["layers"]["exhaustive"] is True  # every module of memfactory/ has a place
    assert kinds["forbidden"]["source_modules"] == ["memfactory"] and kinds["forbidden"]["forbidden_modules"] == [
        "webui"]
    assert set(kinds["acyclic_siblings"]["ancestors"]) == {"memfactory", "webui"}


def test_the_readme_shows_the_contracts_layer_list():
    layers = next(c for c in _contracts() if c["type"] == "layers")["layers"]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- layers: generated from pyproject.toml -->\n```\n(.*?)```", readme, re.DOTALL)
    assert block, "README.md's architecture section lists the layers between the layers marker and a fence"
    shown = [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.split("#")[0].strip()]
    assert shown == [layer.replace("(", "").replace(")", "") for layer in layers], shown


@pytest.mark.parametrize("module", ["memfactory.config", "memfactory.data.sources", "memfactory.targets"])
def test_light_modules_do_not_import_torch(module):
    # the layers keep torch where training happens; validation, data and target building stay light
    code = f"import sys, {module}; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=300, check=True)
    assert done.stdout.strip() == "False"
