"""The layout docs/architecture.md draws is the code's: data flows one way and the tensor core stays torch-only.

docs/architecture.md lists every module of textpipe/ in stage order, one line each. Here that
list is read back and checked against the code:
- every module is listed, and every listed module exists;
- a module imports only modules listed before it (data flows one way; the package's
  ``__init__``/``__main__`` are the public surface and may import anything);
- the tensor core (the modules the doc marks ``[core]``) imports only the tensor core, and
  importing it loads neither torchtext nor spaCy, so a model trains where torchtext cannot load;
- no module is over 400 lines and no function over 50.
"""

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "textpipe"
DOC = ROOT / "docs" / "architecture.md"
LINE = re.compile(r"^\s*(?:textpipe/)?([\w/]+\.py)\s+(.*)$")


def listed_modules() -> list[tuple[str, bool]]:
    """(module name, is tensor core) for each file line of the doc's layout block, in order."""
    block = DOC.read_text(encoding="utf-8").split("```")[1]
    found = []
    for line in block.splitlines():
        if (m := LINE.match(line)) and not m.group(1).endswith(("__init__.py", "__main__.py")):
            found.append((m.group(1)[:-3].replace("/", "."), "[core]" in m.group(2)))
    return found


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


def textpipe_imports(path: Path) -> set[str]:
    """The textpipe modules ``path`` imports (relative or absolute), as dotted names under textpipe."""
    here = module_name(path).split(".")[:-1]
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = here[: len(here) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            found |= {target} if node.module else {".".join(base + [a.name]) for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("textpipe."):
            found.add(node.module.removeprefix("textpipe."))
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("textpipe.") for a in node.names if a.name.startswith("textpipe.")}
    return {f for f in found if f and (PACKAGE / f"{f.replace('.', '/')}.py").exists()}


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:`` (imports for type hints only)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            continue
        yield node
        yield from _runtime_nodes(node)


def modules_in_code() -> list[Path]:
    return [p for p in PACKAGE.rglob("*.py") if p.name not in ("__init__.py", "__main__.py")]


def test_every_module_is_listed_once_and_every_listed_module_exists():
    listed = [name for name, _ in listed_modules()]
    assert len(listed) == len(set(listed)), "a module is listed twice"
    assert sorted(listed) == sorted(module_name(p) for p in modules_in_code())


def test_a_module_imports_only_modules_listed_before_it():
    order = {name: i for i, (name, _) in enumerate(listed_modules())}
    backward = [
        f"{module_name(p)} imports {target}"
        for p in modules_in_code()
        for target in textpipe_imports(p)
        if target in order and order[target] >= order[module_name(p)]
    ]
    assert backward == []


def test_the_tensor_core_imports_neither_torchtext_nor_spacy():
    core = [name for name, is_core in listed_modules() if is_core]
    assert {"models", "collate", "train"} <= set(core)
    # Statically, lazy imports inside functions included: the core imports only the core.
    outside = [f"{module_name(p)} imports {target}" for p in modules_in_code() if module_name(p) in core
               for target in textpipe_imports(p) if target not in core]
    assert outside == []
    code = f"import sys, {', '.join('textpipe.' + m for m in core)}; print(sorted({{m.split('.')[0] for m in sys.modules}} & {{'torchtext', 'spacy'}}))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "[]"


def test_no_module_over_400_lines_and_no_function_over_50():
    long_modules = [f"{p.name}: {n}" for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400]
    long_functions = [
        f"{module_name(p)}.{node.name}: {node.end_lineno - node.lineno + 1}"
        for p in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 50
    ]
    assert long_modules == [] and long_functions == []
