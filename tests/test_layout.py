"""The folders keep their roles: a walk over webapp's imports fails on a loop or on a broken rule of the house.

The rules (docs/architecture.md): generation/, models/ and accel/ know nothing of the web
front, hosting, serving, the configuration or Flask; generation/ never imports accel/ (speed
is installed into a loaded model by models/, through `accel.install`); web/ and hosting/
never reach torch, not even through another module. Imports inside functions count too.
"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "webapp"
HEAVY = {"torch", "transformers"}  # what the web front must never load
WEB_SIDE = {"flask", "flask_socketio", "socketio", "engineio", "werkzeug"}
EVENT_LOOP = {"eventlet"}  # serving's runner hands model calls to OS threads through it; nothing below may
# folder -> the webapp folders and top-level modules it must not import
FORBIDDEN = {
    "generation": {"web", "hosting", "serving", "models", "accel", "config", "cli", "__init__"},
    "models": {"web", "hosting", "serving", "config", "cli", "__init__"},
    "accel": {"web", "hosting", "serving", "models", "config", "cli", "__init__"},
    "serving": {"cli", "__init__"},
    "web": {"serving", "models", "accel", "cli", "__init__"},
    "hosting": {"serving", "models", "accel", "cli", "__init__"},
}
FOLDERS_WITHOUT_FLASK = {"generation": WEB_SIDE | EVENT_LOOP, "models": WEB_SIDE | EVENT_LOOP,
                         "accel": WEB_SIDE | EVENT_LOOP, "serving": WEB_SIDE}


def module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules():
    """webapp's modules by dotted name, each with its path."""
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name, path, known, when_imported=False):
    """(webapp modules, outside top-level packages) that the module imports, anywhere in it.

    `when_imported`: only what runs when it is imported (not inside its functions).
    """
    is_package = path.name == "__init__.py"
    inside, outside = set(), set()
    tree = ast.parse(path.read_text(), str(path))
    nodes = [node for statement in tree.body if not isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                          ast.ClassDef))
             for node in ast.walk(statement)] if when_imported else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from package import module` names a module; `from module import function` names the module
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            if target == "webapp" or target.startswith("webapp."):
                inside.add(target)
            else:
                outside.add(target.split(".")[0])
    return inside, outside


def import_graph():
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def folder(name):
    """'web' for webapp.web.events, 'config' for webapp.config, '__init__' for webapp itself."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


GRAPH = import_graph()
# what importing each package runs: importing webapp.generation.settings runs webapp/generation/__init__.py too
ON_IMPORT = {name: imports_of(name, path, modules(), when_imported=True) for name, path in modules().items()}


def parents(name):
    """The packages Python imports before `name`: webapp, webapp.generation for webapp.generation.settings."""
    parts = name.split(".")
    return [".".join(parts[:end]) for end in range(1, len(parts))]


def test_the_walk_sees_every_folder_and_resolves_relative_imports():
    assert {folder(name) for name in GRAPH} >= set(FORBIDDEN)
    inside, _ = GRAPH["webapp.serving.loader"]
    assert "webapp.generation.engine" in inside and "webapp.models.loading" in inside
    assert "webapp.accel.native" in GRAPH["webapp.accel.lowbit"][0]


def test_no_module_imports_itself_through_others():
    state, loops = {}, []

    def visit(name, path):
        state[name] = "open"
        for target in sorted(GRAPH.get(name, (set(), set()))[0]):
            if target not in GRAPH:
                continue
            if state.get(target) == "open":
                loops.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[name] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    # a package's __init__ importing its own modules (and they it, for a sibling) is no loop of code
    loops = [loop for loop in loops if not all(part.startswith(loop.split(" -> ")[0]) for part in loop.split(" -> "))]
    assert not loops, "import loops:\n" + "\n".join(loops)


@pytest.mark.parametrize("name", sorted(GRAPH))
def test_each_folder_imports_only_what_its_role_allows(name):
    inside, outside = GRAPH[name]
    forbidden = FORBIDDEN.get(folder(name), set())
    broken = sorted(target for target in inside if folder(target) in forbidden and folder(target) != folder(name))
    assert not broken, f"{name} may not import {broken}"
    unwanted = outside & FOLDERS_WITHOUT_FLASK.get(folder(name), set())
    assert not unwanted, f"{name} imports {sorted(unwanted)}"


@pytest.mark.parametrize("name", sorted(name for name in GRAPH if folder(name) in ("web", "hosting")))
def test_the_web_front_never_reaches_torch(name):
    seen, todo, reached = set(), [name], set()
    while todo:
        current = todo.pop()
        if current in seen or current not in GRAPH:
            continue
        seen.add(current)
        inside, outside = GRAPH[current]
        reached |= {(current, package) for package in outside & HEAVY}
        todo += inside
        for package in parents(current):  # its packages' __init__ run first, what they import at import time too
            package_inside, package_outside = ON_IMPORT.get(package, (set(), set()))
            reached |= {(package, heavy) for heavy in package_outside & HEAVY}
            todo += package_inside
    assert not reached, f"{name} reaches {sorted(reached)}"


def test_the_web_front_takes_only_the_settings_from_generation():
    for name, (inside, _) in GRAPH.items():
        if folder(name) in ("web", "hosting"):
            assert {t for t in inside if folder(t) == "generation"} <= {"webapp.generation",
                                                                         "webapp.generation.settings"}, name


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_longer_than_a_newcomer_reads_at_once(path):
    assert len(path.read_text().splitlines()) <= 500


@pytest.mark.parametrize("path", sorted(p for p in PACKAGE.rglob("__init__.py") if p.parent != PACKAGE),
                         ids=lambda p: p.parent.name)
def test_every_folder_says_what_lives_there_and_what_it_may_import(path):
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert doc and "import" in doc
