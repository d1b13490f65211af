"""Which settings a command reads, found in the package's own source, for its `--help`.

From a command's function, follow every function, method and class of the package it names
(a call, a reference such as `http=BoundedHeadProtocol`, or an app factory given as the
string "asgi_todo.app:create_app"), and collect the attributes read from a value whose
name ends in `settings` (`settings.database_url`, `self.settings.api_prefix`), and from `self`
in the settings classes' own methods. It over-counts rather than misses: a function that
reads a setting on some path counts. tests/test_main.py checks it against what commands are
known to need.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

_PACKAGE = Path(__file__).resolve().parent
_NAME = _PACKAGE.name
_SETTINGS_CLASSES = {f"{_NAME}.settings:Settings", f"{_NAME}.settings:ServerSettings"}
# Alembic runs migrations/env.py, by path, for every migration command.
_LOADS = {f"{_NAME}.migrate:config": f"{_NAME}.migrations.env:"}
_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_FACTORY = re.compile(rf"^{_NAME}(\.\w+)*:\w+$")


@dataclass
class _Code:
    reads: set[str] = field(default_factory=set)
    refs: set[str] = field(default_factory=set)


def settings_read(function: Callable[..., Any]) -> set[str]:
    """The attribute names that `function`, and everything of ours it reaches, reads from settings."""
    index = _index()
    start = f"{function.__module__}:{function.__qualname__}"
    seen: set[str] = set()
    todo = [start]
    reads: set[str] = set()
    while todo:
        key = todo.pop()
        if key in seen:
            continue
        seen.add(key)
        for found in _expand(index, key):
            reads |= index[found].reads
            todo.extend(index[found].refs)
    return reads


def _expand(index: dict[str, _Code], key: str) -> Iterator[str]:
    """A function's or a module constant's own entry; for a class, every method of it; for any
    other name, its module's other top-level code; and what a module's code loads by path."""
    prefix = key + "."
    # A settings class's methods count where they are called (settings.is_sqlite), not wherever
    # the class is named.
    found = [name for name in index if name == key or (name.startswith(prefix) and key not in _SETTINGS_CLASSES)]
    module, _, name = key.partition(":")
    if not found and "." not in name and f"{module}:" in index:
        found = [f"{module}:"]
    for name in found:
        yield name
        if name in _LOADS:
            yield from _expand(index, _LOADS[name])


@cache
def _index() -> dict[str, _Code]:
    modules = {_module(path): path for path in _PACKAGE.rglob("*.py")}
    index: dict[str, _Code] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imports = _imports(tree, module, path.name == "__init__.py", set(modules))
        local = {node.name for node in tree.body if isinstance(node, _DEFINITIONS)}
        _walk(tree.body, module, "", imports, local, index)
        rest: list[ast.stmt] = []
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else []
            if isinstance(node, ast.AnnAssign):
                targets = [node.target]
            names = [target.id for target in targets if isinstance(target, ast.Name)]
            for name in names:  # a module's constant or list (OPERATIONS): its own entry
                index[f"{module}:{name}"] = _code(node, module, None, imports, local)
            if not names and not isinstance(node, _DEFINITIONS):
                rest.append(node)
        index[f"{module}:"] = _code(ast.Module(body=rest, type_ignores=[]), module, None, imports, local)
    return index


def _module(path: Path) -> str:
    parts = [_NAME, *path.relative_to(_PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.Module, module: str, is_package: bool, modules: set[str]) -> dict[str, str]:
    """Local name -> "pkg.module" (a module of ours) or "pkg.module:name"."""
    found: dict[str, str] = {}
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            source = f"{base}.{node.module}" if node.module else base
        elif node.module and node.module.split(".")[0] == _NAME:
            source = node.module
        else:
            continue
        for alias in node.names:
            name = alias.asname or alias.name
            found[name] = f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else f"{source}:{alias.name}"
    return found


def _walk(
    body: list[ast.stmt], module: str, prefix: str, imports: dict[str, str], local: set[str], index: dict[str, _Code]
) -> None:
    for node in body:
        if isinstance(node, ast.ClassDef):
            index[f"{module}:{prefix}{node.name}"] = _Code()  # its methods are its entries
            _walk(node.body, module, f"{prefix}{node.name}.", imports, local, index)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            owner = f"{module}:{prefix[:-1]}" if prefix else None
            index[f"{module}:{prefix}{node.name}"] = _code(node, module, owner, imports, local)


def _code(node: ast.AST, module: str, owner: str | None, imports: dict[str, str], local: set[str]) -> _Code:
    code = _Code()
    for child in ast.walk(node):
        if isinstance(child, ast.Attribute):
            base = child.value
            base_name = base.id if isinstance(base, ast.Name) else base.attr if isinstance(base, ast.Attribute) else ""
            if base_name.endswith("settings") or (base_name == "self" and owner in _SETTINGS_CLASSES):
                code.reads.add(child.attr)
                code.refs.update(f"{settings_class}.{child.attr}" for settings_class in _SETTINGS_CLASSES)
            if isinstance(base, ast.Name):
                if base.id in ("self", "cls") and owner is not None:
                    code.refs.add(f"{owner}.{child.attr}")
                elif imports.get(base.id, ":").count(":") == 0:  # a module of ours
                    code.refs.add(f"{imports[base.id]}:{child.attr}")
        elif isinstance(child, ast.Name):
            if child.id in imports and ":" in imports[child.id]:
                code.refs.add(imports[child.id])
            elif child.id in local:
                code.refs.add(f"{module}:{child.id}")
        elif isinstance(child, ast.Constant) and isinstance(child.value, str) and _FACTORY.match(child.value):
            code.refs.add(child.value)
    return code
