"""docs/concepts.md and docs/architecture.md name code that exists: every textpipe name they cite imports.

The docs cite textpipe code as `module.name` (or `module.Class.method`), files as `textpipe/x.py`
and tests as `test_file.py::test_name`. Each citation is resolved here by importing it, so a
rename that leaves a doc behind fails this test instead of misleading a reader.
"""

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = {ROOT / "docs" / "concepts.md": 40, ROOT / "docs" / "architecture.md": 10}  # at least this many citations each
CODE = re.compile(r"`([^`\s]+)`")


def textpipe_modules() -> set[str]:
    package = ROOT / "textpipe"
    return {".".join(p.relative_to(package).with_suffix("").parts) for p in package.rglob("*.py") if p.name != "__init__.py"} | {
        ".".join(p.parent.relative_to(package).parts) for p in package.rglob("__init__.py") if p.parent != package
    }


def citations(doc: Path) -> list[str]:
    return [c.split("(")[0] for c in CODE.findall(doc.read_text(encoding="utf-8"))]


def resolve_name(cited: str, modules: set[str]):
    """The object `cited` names, importing the longest textpipe module it starts with; None if it names none."""
    parts = cited.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:cut])
        if module in modules:
            obj = importlib.import_module(f"textpipe.{module}")
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
            return obj
    return None


def defined_tests() -> set[str]:
    names = set()
    for file in (ROOT / "tests").glob("test_*.py"):
        for node in ast.parse(file.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef):
                names.add(f"{file.name}::{node.name}")
    return names


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.name)
def test_every_cited_name_file_and_test_exists(doc):
    least = DOCS[doc]
    if not doc.is_file():
        pytest.fail(f"{doc.relative_to(ROOT)} is missing")
    modules, tests, resolved = textpipe_modules(), defined_tests(), 0
    for cited in citations(doc):
        if re.search(r"\.(json|md|csv|tsv|jsonl|png|txt|npy|toml|html|pt|safetensors)$", cited) and "/" not in cited:
            continue  # a file's name (metrics.json), not code
        if "::" in cited:
            assert cited.split("[")[0] in tests, f"{doc.name} cites {cited}, which is no test in tests/"
        elif cited.endswith((".py", ".md", ".toml", "/")) and "/" in cited or cited.endswith(".py"):
            places = (ROOT / cited, ROOT / "textpipe" / cited, ROOT / "tests" / cited)
            assert any(p.exists() for p in places), f"{doc.name} cites {cited}, which does not exist"
        elif resolve_name(cited, modules) is not None:
            pass  # getattr raised if a part of it is missing
        else:
            continue
        resolved += 1
    assert resolved >= least, f"{doc.name} cites only {resolved} textpipe names or tests; cite code as `module.name`"


def test_no_doc_or_code_cites_the_ci_folder_beside_the_clone():
    """A user's clone has no folder of CI's data beside it: nothing the project ships may point there."""
    shipped = [ROOT / "README.md", ROOT / "Makefile", *(ROOT / "docs").glob("*.md"), *(ROOT / "textpipe").rglob("*.py"),
               *(ROOT / "bench").glob("*.py"), *(ROOT / "tests").glob("*.py"), *(ROOT / "configs").glob("*.toml")]
    marker = "../" + "shared"  # spelled apart so this file does not cite it either
    citing = [str(p.relative_to(ROOT)) for p in shipped if marker in p.read_text(encoding="utf-8")]
    assert not citing, f"these cite {marker}, which a user's clone does not have: {citing}"
