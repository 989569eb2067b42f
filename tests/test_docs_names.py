"""The docs name code that exists (every textpipe name they cite imports) and link to headings that exist.

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
DOCS = {ROOT / "docs" / name: least for name, least in {  # at least this many citations each
    "concepts.md": 40, "architecture.md": 10, "cli.md": 5, "data.md": 5, "runs.md": 10, "deploy.md": 5, "python.md": 10,
    "benchmarks.md": 10}.items()}
SHIPPED = {"textpipe", "tests", "bench", "configs", "docs", ".ci"}  # the repo's own folders: a path in them must exist
CODE = re.compile(r"`([^`\s]+)`")


def textpipe_modules() -> set[str]:
    package = ROOT / "textpipe"
    return {".".join(p.relative_to(package).with_suffix("").parts) for p in package.rglob("*.py") if p.name != "__init__.py"} | {
        ".".join(p.parent.relative_to(package).parts) for p in package.rglob("__init__.py") if p.parent != package
    }


def citations(doc: Path) -> list[str]:
    return [c.split("(")[0] for c in CODE.findall(doc.read_text(encoding="utf-8"))]


def by_short_name(modules: set[str]) -> dict[str, str]:
    """Each module under its full dotted name, and under its own name where that is unique (`models` for core.models)."""
    leaves: dict[str, list[str]] = {}
    for module in modules:
        leaves.setdefault(module.rpartition(".")[2], []).append(module)
    short = {leaf: found[0] for leaf, found in leaves.items() if len(found) == 1 and leaf not in modules and not found[0].startswith("cli.")}
    return short | {m: m for m in modules}


def resolve_name(cited: str, modules: set[str]):
    """The object `cited` names, importing the longest textpipe module it starts with; None if it names none."""
    parts, modules = cited.split("."), by_short_name(modules)
    for cut in range(len(parts) - 1, 0, -1):
        module = modules.get(".".join(parts[:cut]))
        if module is not None:
            obj = importlib.import_module(f"textpipe.{module}")
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
            return obj
    return None


def defined_tests() -> set[str]:
    names = set()
    for file in (ROOT / "tests").rglob("test_*.py"):
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
        if re.search(r"\.(json|md|csv|tsv|jsonl|png|txt|npy|toml|html|pt|safetensors|c)$", cited) and "/" not in cited:
            continue  # a file's name (metrics.json), not code
        if "/" in cited and cited.split("/")[0] not in SHIPPED:
            continue  # a path a run or a download writes (runs/mine/, OUT/.textpipe-run/, data/vectors/), not the repo's
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


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: its rendered text lower-cased, punctuation but - and _ dropped, spaces as -."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(doc: Path, deepest: int = 6) -> list[str]:
    """Each heading's anchor in a Markdown file, repeats numbered -1, -2 as GitHub does; code blocks skipped."""
    seen: dict[str, int] = {}
    found, fenced = [], False
    for line in doc.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (heading := re.match(r"(#{1,6}) (.+)", line)):
            slug = github_anchor(heading.group(2))
            if len(heading.group(1)) <= deepest:
                found.append(f"{slug}-{seen[slug]}" if slug in seen else slug)
            seen[slug] = seen.get(slug, 0) + 1
    return found


def relative_links(doc: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.S)
    return [link for link in LINK.findall(text) if not re.match(r"[a-z]+:", link)]


@pytest.mark.parametrize("doc", [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))], ids=lambda d: d.name)
def test_every_relative_link_reaches_a_file_and_heading(doc):
    for link in relative_links(doc):
        path, _, anchor = link.partition("#")
        target = (doc.parent / path).resolve() if path else doc
        assert target.exists(), f"{doc.name} links to {link}: no such file"
        if anchor:
            assert target.suffix == ".md" and anchor in anchors(target), f"{doc.name} links to {link}: no such heading"


def test_readme_reaches_every_section_of_the_pages_it_was_split_into():
    """Each ## section of the docs pages the README was split into is one click from the README."""
    linked = set(relative_links(ROOT / "README.md"))
    for name in ("cli.md", "data.md", "runs.md", "deploy.md", "python.md"):
        doc = ROOT / "docs" / name
        missing = [h for h in anchors(doc, deepest=2) if f"docs/{name}#{h}" not in linked]
        assert not missing, f"README.md links to no docs/{name}#{missing[0]}: link each section of docs/{name}"


def test_github_anchor_matches_githubs_slugs():
    assert github_anchor("Why a label (explanations)") == "why-a-label-explanations"
    assert github_anchor("What `train` writes") == "what-train-writes"
    assert github_anchor("How good, how fast") == "how-good-how-fast"
    assert github_anchor("Deploying a model: bundles, quantize, explain, serve") == "deploying-a-model-bundles-quantize-explain-serve"


def test_no_doc_or_code_cites_the_ci_folder_beside_the_clone():
    """A user's clone has no folder of CI's data beside it: nothing the project ships may point there."""
    shipped = [ROOT / "README.md", ROOT / "Makefile", *(ROOT / "docs").glob("*.md"), *(ROOT / "textpipe").rglob("*.py"),
               *(ROOT / "bench").glob("*.py"), *(ROOT / "tests").glob("*.py"), *(ROOT / "configs").glob("*.toml")]
    marker = "../" + "shared"  # spelled apart so this file does not cite it either
    citing = [str(p.relative_to(ROOT)) for p in shipped if marker in p.read_text(encoding="utf-8")]
    assert not citing, f"these cite {marker}, which a user's clone does not have: {citing}"
