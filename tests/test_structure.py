"""The layout of dicompressor.py (STYLE.md): sections in dependency order, a module
docstring that is their table of contents, and no long stretch without a banner."""

from __future__ import annotations

import ast
import re

from conftest import ROOT

SOURCE = (ROOT / "dicompressor.py").read_text(encoding="utf-8")
LINES = SOURCE.splitlines()
SECTION = re.compile(r"# ==== (\d+)\. (.+) ====")
SUB = re.compile(r"# ---- (.+) ----")
#: Most lines between two banners (STYLE.md: "at most about 600").
MAX_LINES_WITHOUT_BANNER = 600


def banners() -> list[tuple[int, int, str]]:
    """Return (line number, level, name) of every banner: level 0 sections, 1 sub-sections."""
    found = []
    for number, line in enumerate(LINES, 1):
        if match := SECTION.fullmatch(line):
            found.append((number, 0, f"{match[1]}. {match[2]}"))
        elif match := SUB.fullmatch(line):
            found.append((number, 1, match[1]))
    return found


def docstring_outline() -> list[tuple[int, str]]:
    """Return the sections (level 0) and sub-sections (level 1) the docstring lists."""
    outline = []
    for line in (ast.get_docstring(ast.parse(SOURCE)) or "").splitlines():
        if match := re.fullmatch(r"(\d+)\. ([^:]+):.*", line):
            outline.append((0, f"{match[1]}. {match[2]}"))
        elif match := re.fullmatch(r"   - (.+)", line):
            outline.append((1, match[1]))
    return outline


def section_of_line() -> list[int]:
    """Return, for each line (index 0 = line 1), the number of its section (0 before 1)."""
    numbers, current = [], 0
    for line in LINES:
        if match := SECTION.fullmatch(line):
            current = int(match[1])
        numbers.append(current)
    return numbers


def loaded_names(node: ast.AST) -> set[str]:
    """Return the names a definition reads when it runs (annotations left out)."""
    names: set[str] = set()

    def visit(item: ast.AST) -> None:
        if isinstance(item, ast.arg):
            return  # its annotation is not evaluated (from __future__ import annotations)
        for field, value in ast.iter_fields(item):
            if field in ("annotation", "returns"):
                continue
            children = value if isinstance(value, list) else [value]
            for child in children:
                if isinstance(child, ast.AST):
                    visit(child)
        if isinstance(item, ast.Name) and isinstance(item.ctx, ast.Load):
            names.add(item.id)

    visit(node)
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):  # a local of the same name
        local = {a.arg for a in ast.walk(node) if isinstance(a, ast.arg)}
        stored = (n for n in ast.walk(node) if isinstance(n, ast.Name))
        local |= {n.id for n in stored if isinstance(n.ctx, ast.Store)}
        names -= local
    return names


def defined_names(node: ast.stmt) -> list[str]:
    """Return the top-level names a statement defines."""
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
        return [node.name]
    targets = node.targets if isinstance(node, ast.Assign) else []
    if isinstance(node, ast.AnnAssign):
        targets = [node.target]
    names = []
    for target in targets:
        for item in ast.walk(target):
            if isinstance(item, ast.Name):
                names.append(item.id)
    return names


class TestSections:
    def test_docstring_lists_every_banner(self) -> None:
        assert docstring_outline() == [(level, name) for _, level, name in banners()]

    def test_sections_are_numbered_in_order(self) -> None:
        numbers = [int(name.split(".")[0]) for _, level, name in banners() if level == 0]
        assert numbers == list(range(1, 10))

    def test_no_long_stretch_without_a_banner(self) -> None:
        starts = [number for number, _, _ in banners()] + [len(LINES) + 1]
        stretches = [(b - a, a) for a, b in zip(starts, starts[1:], strict=False)]
        longest, where = max(stretches)
        assert longest <= MAX_LINES_WITHOUT_BANNER, f"{longest} lines from line {where}"
        after_docstring = ast.parse(SOURCE).body[0].end_lineno
        first = next(n for n, line in enumerate(LINES, 1) if n > after_docstring and line)
        assert (starts[0], LINES[starts[0] - 1]) == (first, "# ==== 1. Header ===="), (
            "section 1's banner must follow the module docstring"
        )

    def test_no_definition_uses_a_later_section(self) -> None:
        tree = ast.parse(SOURCE)
        sections = section_of_line()
        home: dict[str, int] = {}
        for node in tree.body:
            for name in defined_names(node):
                home.setdefault(name, sections[node.lineno - 1])
        later = []
        for node in tree.body:
            mine = sections[node.lineno - 1]
            for name in sorted(loaded_names(node)):
                if home.get(name, 0) > mine:
                    where = defined_names(node) or [f"line {node.lineno}"]
                    later.append(f"{where[0]} (section {mine}) uses {name} (section {home[name]})")
        assert not later, "\n".join(later)

    def test_the_checks_can_fail(self) -> None:
        """The reference check sees a use of a later section (and only that)."""
        tree = ast.parse("def early():\n    return late()\n\ndef late():\n    return 1\n")
        assert loaded_names(tree.body[0]) == {"late"}
        assert loaded_names(ast.parse("def f(x: Later) -> Later:\n    pass\n").body[0]) == set()
        shadowed = ast.parse("def f():\n    late = 1\n    return late\n").body[0]
        assert loaded_names(shadowed) == set()
