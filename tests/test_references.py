"""Every file the repository refers to must be in the repository.

The source, documentation and build files (``git ls-files`` with untracked, not ignored files,
so that new files are checked before their first commit) are scanned for three kinds of
reference:

1. text that points outside the repository: the private operator reference and paper texts
   the project was written from, and the folder beside the checkout that held them.  Cite a
   paper by the short names of docs/conventions.md instead;
2. repository-relative paths under ``docs/``, ``refdyn/``, ``gpu/``, ``tests/``, ``tutorials/``
   and ``.ci/``, and relative links of Markdown files (resolved from the file's folder): each
   must name a file (a pattern with ``*`` at least one file; a figure under ``docs/figures/``
   may also be one that a tutorial writes when it runs);
3. dotted names ``refdyn.<module>``, ``refdyn.gpu.<module>``, ``refdyn.testing.<module>`` written
   in backticks (Markdown, reST roles such as ``:mod:``): the module must be a file of the
   repository, or the name an attribute of the package it stops at, read from the package's
   ``__init__.py`` without importing it.

The test fails with every offending ``file:line`` in one message.
"""

from __future__ import annotations

import ast
import re
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED_SUFFIXES = {".py", ".md", ".cu", ".cuh", ".h", ".toml"}
SCANNED_NAMES = {".ci/run"}

# Built from pieces so that this file does not match its own patterns.
OUTSIDE_REFERENCE = re.compile(
    "|".join(["REFERENCE" + r"\.md", "papers" + r"/0\d\d_", r"\.\." + "/shared",
              "paper" + r" 00\d"]),
    re.IGNORECASE)

# A path starts a word (not inside a URL or another project's path) and ends with a suffix.
PATH_CHARS = r"[\w.*/-]"
REPOSITORY_PATH = re.compile(
    r"(?<![\w./-])((?:docs|refdyn|gpu|tests|tutorials|\.ci)/" + PATH_CHARS + r"*?"
    r"\.(?:md|py|cu|cuh|h|png|toml))(?![\w/])")
MARKDOWN_LINK = re.compile(r"\]\(([^()\s]+)\)")
DOTTED_NAME = re.compile(r"`~?(refdyn(?:\.[A-Za-z_]\w*)+)")
TUTORIAL_FIGURE = re.compile(r"[\"']([\w-]+\.png)[\"']")


def repository_files() -> list[str]:
    """Tracked files and untracked ones git does not ignore, as repository-relative paths."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
        capture_output=True, text=True, check=True).stdout.splitlines()
    return sorted({name for name in listed if (ROOT / name).is_file()})


def scanned_files() -> list[str]:
    return [name for name in repository_files()
            if Path(name).suffix in SCANNED_SUFFIXES or name in SCANNED_NAMES]


def line_of(text: str, position: int) -> int:
    return text.count("\n", 0, position) + 1


@lru_cache(maxsize=None)
def figures_written_by_tutorials() -> frozenset[str]:
    """The docs/figures/ paths of the PNG files the tutorials name (and write when run)."""
    names = set()
    for tutorial in (ROOT / "tutorials").glob("*.py"):
        names.update(TUTORIAL_FIGURE.findall(tutorial.read_text(encoding="utf-8")))
    return frozenset(f"docs/figures/{name}" for name in names)


def path_exists(relative: str) -> bool:
    """Whether a repository-relative path (a ``*`` pattern allowed) names a file."""
    if "*" in relative:
        return any(match.is_file() for match in ROOT.glob(relative))
    return (ROOT / relative).is_file() or relative in figures_written_by_tutorials()


def markdown_link_target(source: str, link: str):
    """The repository-relative path a relative Markdown link names, or None for a URL, an
    anchor in the same page or a target outside the repository (reported as missing)."""
    target = link.split("#", 1)[0]
    if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
        return None
    resolved = (ROOT / source).parent / target
    try:
        return resolved.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return target


@lru_cache(maxsize=None)
def package_names(package: Path) -> frozenset[str]:
    """Names an ``__init__.py`` defines, imports or lists in ``__all__``, read with ast."""
    tree = ast.parse((package / "__init__.py").read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(target.id for target in targets if isinstance(target, ast.Name))
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
                names.update(ast.literal_eval(node.value))
    return frozenset(names)


def dotted_name_exists(name: str) -> bool:
    """Whether ``refdyn.<module>...`` names a module file or package of the repository, or an
    attribute of the package where the modules stop (``refdyn.gpu`` is the folder gpu/)."""
    parts = name.split(".")[1:]
    if parts[0] == "gpu":
        directory, parts = ROOT / "gpu", parts[1:]
    else:
        directory = ROOT / "refdyn"
    for part in parts:
        if (directory / part / "__init__.py").is_file():
            directory = directory / part
        elif (directory / f"{part}.py").is_file():
            return True
        else:
            return part in package_names(directory)
    return True


def offending_references() -> list[str]:
    """Every broken reference as ``file:line: what``."""
    problems = []
    for source in scanned_files():
        text = (ROOT / source).read_text(encoding="utf-8", errors="replace")
        for match in OUTSIDE_REFERENCE.finditer(text):
            problems.append(f"{source}:{line_of(text, match.start())}: "
                            f"{match.group(0)!r} points outside the repository")
        for match in REPOSITORY_PATH.finditer(text):
            if not path_exists(match.group(1)):
                problems.append(f"{source}:{line_of(text, match.start())}: "
                                f"{match.group(1)} does not exist")
        if source.endswith(".md"):
            for match in MARKDOWN_LINK.finditer(text):
                target = markdown_link_target(source, match.group(1))
                if target is not None and not path_exists(target):
                    problems.append(f"{source}:{line_of(text, match.start())}: link "
                                    f"{match.group(1)} ({target}) does not exist")
        for match in DOTTED_NAME.finditer(text):
            if not dotted_name_exists(match.group(1)):
                problems.append(f"{source}:{line_of(text, match.start())}: "
                                f"{match.group(1)} names no module or attribute of refdyn")
    return problems


def test_every_reference_names_a_file_of_the_repository():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the repository's files are listed by git")
    problems = offending_references()
    assert not problems, (f"{len(problems)} references to files that do not exist:\n"
                          + "\n".join(problems))
