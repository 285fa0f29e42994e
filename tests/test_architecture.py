"""The shape of the house: imports only go down, no circles, a core without Lightning, short files, ruff clean.

The layers, bottom to top (a module may import its own layer and the ones below, never one above):

    ops -> config -> layers -> model -> core (data, optim, checkpoint, tokenizer, ttl, dynamic, online, generate)
        -> continual -> lit (Lightning glue) -> evaluation | finetune (neither imports the other)
        -> commands (cli, convert, stack)

Everything up to ``continual`` is the core: it never imports Lightning.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hope"

LAYERS = [
    ("ops", ("hope.ops",)),
    ("config", ("hope.config", "hope.cms_config", "hope.presets")),
    ("layers", ("hope.layers",)),
    ("model", ("hope.model", "hope.loss")),
    (
        "core",
        (
            "hope.tokenizer",
            "hope.data",
            "hope.optim",
            "hope.checkpoint",
            "hope.ttl",
            "hope.dynamic",
            "hope.online",
            "hope.generate",
        ),
    ),
    ("continual", ("hope.continual",)),
    ("lit", ("hope.lit",)),
    ("apps", ("hope.evaluation", "hope.finetune")),
    (
        "commands",
        ("hope.cli", "hope.convert", "hope.stack", "hope.__main__", "hope", "hope.finetune.ladder"),
    ),
]
CORE = {"ops", "config", "layers", "model", "core", "continual"}
# optional dependencies may be imported where they are used, so that hope works without them
OPTIONAL = {"flash_attn", "deepspeed", "lm_eval", "matplotlib", "triton", "fla"}
# modules that import an optional dependency at the top
OPTIONAL_WRAPPERS = {"hope.evaluation.lm_eval_adapter", "hope.ops.titans.triton", "hope.ops.titans.gated_delta"}
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    """Index in LAYERS of the longest prefix that names ``module`` or a package above it."""
    best, index = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, index = len(prefix), i
    assert index is not None, f"{module} is in no layer of tests/test_architecture.py; add it"
    return index


def imported_modules(node: ast.AST) -> list[str]:
    """The modules an import statement loads (``from hope.x import y`` loads ``hope.x.y`` if that is a module)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    subs = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES]
    return subs or [base]


def is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def imports(path: Path) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """``(top, nested)``: (line, module) of the imports at module level (outside ``if TYPE_CHECKING``) and of
    those inside functions or classes."""
    tree = ast.parse(path.read_text())
    top, nested = [], []

    def visit(node: ast.AST, inside: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and is_type_checking(child):
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                (nested if inside else top).extend((child.lineno, m) for m in imported_modules(child))
            scope = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda)
            visit(child, inside or scope)

    visit(tree, False)
    return top, nested


def hope_graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        top, _ = imports(path)
        graph[name] = {m for _, m in top if m in MODULES and m != name}
    return graph


def test_every_module_has_a_layer():
    for name in MODULES:
        layer_of(name)


def test_imports_only_go_down():
    upward = []
    for name, path in MODULES.items():
        own = layer_of(name)
        for line, target in imports(path)[0]:
            if target.split(".")[0] == "hope" and layer_of(target) > own:
                upward.append(
                    f"{path.relative_to(ROOT)}:{line} ({LAYERS[own][0]}) imports {target} "
                    f"({LAYERS[layer_of(target)][0]})"
                )
    assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


def test_evaluation_and_finetune_do_not_import_each_other():
    """The two apps stay apart; a command inside one of them (``hope.finetune.ladder``) sits above both."""
    crossing = []
    for name, path in MODULES.items():
        if LAYERS[layer_of(name)][0] == "commands":
            continue
        for side, other in (("hope.evaluation", "hope.finetune"), ("hope.finetune", "hope.evaluation")):
            if name.startswith(side):
                crossing += [
                    f"{path.relative_to(ROOT)}:{line} imports {t}"
                    for line, t in imports(path)[0]
                    if t == other or t.startswith(other + ".")
                ]
    assert not crossing, "\n".join(crossing)


def test_no_import_circles():
    graph, state, cycles = hope_graph(), {}, []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import circles:\n" + "\n".join(cycles)


def test_imports_inside_functions_only_for_optional_dependencies():
    hidden = []
    for path in MODULES.values():
        hidden += [
            f"{path.relative_to(ROOT)}:{line} imports {m}"
            for line, m in imports(path)[1]
            if m.split(".")[0] not in OPTIONAL and m not in OPTIONAL_WRAPPERS
        ]
    assert not hidden, "imports inside functions (move them to the top):\n" + "\n".join(hidden)


def test_the_core_never_imports_lightning():
    found = []
    for name, path in MODULES.items():
        if LAYERS[layer_of(name)][0] in CORE:
            found += [
                f"{path.relative_to(ROOT)}:{line} imports {m}"
                for line, m in imports(path)[0]
                if m.split(".")[0] in ("lightning", "pytorch_lightning")
            ]
    assert not found, "\n".join(found)


def test_importing_the_core_loads_no_lightning():
    code = (
        "import sys, hope.model, hope.ttl, hope.data.sources, hope.checkpoint, hope.continual.methods, hope.optim; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"


def test_naive_references_are_leaves():
    """``naive.py`` files are what the tests compare the fast ops with; nothing in the package uses them."""
    users = [
        f"{path.relative_to(ROOT)}:{line} imports {m}"
        for name, path in MODULES.items()
        for line, m in imports(path)[0] + imports(path)[1]
        if m.endswith(".naive")
    ]
    assert not users, "\n".join(users)


def tracked_python_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True)
    files = listed.stdout.split() if listed.returncode == 0 else []
    return [ROOT / f for f in files] or sorted(p for p in ROOT.rglob("*.py") if ".venv" not in p.parts)


def test_no_python_file_over_400_lines():
    long = [
        f"{p.relative_to(ROOT)}: {n}"
        for p in tracked_python_files()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    ]
    assert not long, f"files over {MAX_LINES} lines (split them):\n" + "\n".join(long)


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff(command):
    ruff = subprocess.run([sys.executable, "-m", "ruff", *command, "."], cwd=ROOT, capture_output=True, text=True)
    assert ruff.returncode == 0, ruff.stdout + ruff.stderr
