"""The layout docs/architecture.md draws is the code's: the folders are the stages, data flows one way.

docs/architecture.md lists every module of textpipe/ in stage order, one line each, grouped by
sub-package. Here that list is read back and checked against the code:
- every module is listed, every listed module exists, and the packages come in PACKAGES order,
  each one's modules together, each package's ``__init__`` saying in three lines what it holds;
- a module imports only modules listed before it (data flows one way; the package's
  ``__init__``/``__main__`` are the public surface and may import anything);
- the tensor core (``textpipe/core/``) imports only itself, and importing it loads neither
  torchtext nor spaCy, so a model trains where torchtext cannot load;
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
PACKAGES = ["core", "text", "bundle", "run", "", "cli"]  # in the order data flows; "" is textpipe/ itself (estimator.py)


def listed_modules() -> list[str]:
    """The dotted module names (under textpipe) of the doc's layout block, in order."""
    block = DOC.read_text(encoding="utf-8").split("```")[1]
    return [m.group(1)[:-3].replace("/", ".") for line in block.splitlines()
            if (m := LINE.match(line)) and not m.group(1).endswith(("__init__.py", "__main__.py"))]


def package_of(module: str) -> str:
    return module.rpartition(".")[0]


def core_modules() -> list[str]:
    return [name for name in listed_modules() if package_of(name) == "core"]


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
    listed = listed_modules()
    assert len(listed) == len(set(listed)), "a module is listed twice"
    assert sorted(listed) == sorted(module_name(p) for p in modules_in_code())


def test_the_map_lists_the_packages_in_order_each_one_together():
    seen = [package_of(name) for name in listed_modules()]
    runs = [p for i, p in enumerate(seen) if i == 0 or seen[i - 1] != p]
    assert runs == PACKAGES, "the map's modules, by package, come in PACKAGES order, each package's together"
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert folders == set(PACKAGES) - {""}, "a sub-package of textpipe/ is missing from PACKAGES, or the reverse"


def test_each_sub_package_says_in_three_lines_what_it_holds_and_may_import():
    for name in PACKAGES[:4]:
        doc = ast.get_docstring(ast.parse((PACKAGE / name / "__init__.py").read_text(encoding="utf-8"))) or ""
        assert len(doc.strip().splitlines()) == 3 and "import" in doc, f"textpipe/{name}/__init__.py"


def test_a_module_imports_only_modules_listed_before_it():
    order = {name: i for i, name in enumerate(listed_modules())}
    backward = [
        f"{module_name(p)} imports {target}"
        for p in modules_in_code()
        for target in textpipe_imports(p)
        if target in order and order[target] >= order[module_name(p)]
    ]
    assert backward == []


def test_the_tensor_core_imports_neither_torchtext_nor_spacy():
    core = core_modules()
    assert {"core.models", "core.collate", "core.train"} <= set(core)
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


def test_no_function_outside_the_cli_takes_more_than_five_arguments():
    """Positional or required parameters besides self/cls: a sixth travels in an object (Run, Loaders, Bundle, Outputs)
    or as a keyword-only option with a default."""
    crowded = []
    for p in PACKAGE.rglob("*.py"):
        if "cli" in p.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                positional = [x for x in a.posonlyargs + a.args if x.arg not in ("self", "cls")]
                required = [k for k, default in zip(a.kwonlyargs, a.kw_defaults) if default is None]
                if len(positional) + len(required) > 5:
                    crowded.append(f"{module_name(p)}.{node.name}")
    assert crowded == []


def test_every_public_function_and_class_is_used_somewhere():
    """A public top-level name of textpipe/ is named again somewhere (the package, its tests, bench/,
    docs/, the Makefile): one that nothing calls is dead code to delete, not an API to keep."""
    sources = [p for p in PACKAGE.rglob("*.py")] + list((ROOT / "tests").rglob("*.py")) + list((ROOT / "bench").rglob("*.py")) \
        + list((ROOT / "docs").rglob("*.md")) + [ROOT / "Makefile"]
    text = "\n".join(p.read_text(encoding="utf-8") for p in sources if p.is_file())
    unused = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                if len(re.findall(rf"\b{node.name}\b", text)) < 2:
                    unused.append(f"{path.relative_to(ROOT)}: {node.name}")
    assert not unused, f"defined and never used: {unused}"


def test_every_dependency_is_imported_or_says_who_needs_it():
    """pyproject.toml's dependencies are textpipe's imports; one it never imports says on its line who needs it."""
    import tomllib

    lines = (ROOT / "pyproject.toml").read_text(encoding="utf-8").splitlines()
    code = "\n".join(p.read_text(encoding="utf-8") for p in PACKAGE.rglob("*.py"))
    for requirement in tomllib.loads("\n".join(lines))["project"]["dependencies"]:
        name = re.match(r"[\w-]+", requirement).group(0).replace("-", "_")
        imported = re.search(rf"^\s*(import|from) {name}\b", code, re.M)
        line = next(line for line in lines if f'"{requirement}"' in line)
        assert imported or "never imported" in line, f"{requirement}: textpipe never imports it; remove it, or say on its line who needs it"


def test_library_code_logs_and_never_prints():
    """Outside cli/, progress and warnings go to the ``textpipe`` logger (the caller decides where), never print or sys.stderr."""
    printing = []
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE).parts[0] == "cli":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        scripts = {id(n) for node in tree.body if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) for n in ast.walk(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and id(node) not in scripts and ast.unparse(node.func) in ("print", "sys.stderr.write", "sys.stdout.write"):
                printing.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not printing, f"prints instead of logging: {printing}"
