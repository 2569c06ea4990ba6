"""Which tests need a live server, read from their code: ``live`` for a test that boots one
(through its fixtures or its own body), ``unit`` for every other. ``tests/conftest.py`` marks
every collected test with one of the two, so no module sets either by hand.

A test boots a server when the code of its function or of any fixture it uses (its whole fixture
closure) reaches one of ``BOOTS`` (the harness's ``start_server``, Ray's own starts), runs one of
``BOOT_MODULES`` (``python -m loadtests.bench``) or a console script of ``BOOT_SCRIPTS`` (the
``ray-tfserving`` CLI, ``serve``). "Reaches" follows the names a function loads (its globals,
their attributes, the imports inside it, nested functions and lambdas) into every function and
class of the test code (``tests``, ``loadtests``), so a helper that boots makes live whatever
calls it, at any depth. Nothing is run: the bytecode is read. A fixture fetched by name while
the test runs (``request.getfixturevalue``) is not seen: a server fixture is asked for as an
argument.
"""

from __future__ import annotations

import builtins
import dis
import inspect
import os
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

BOOTS = frozenset(
    {
        "tests.harness.start_server",
        "loadtests.launcher.start_server",
        "ray.init",
        "ray._private.worker.init",
        "ray.cluster_utils.Cluster",
        "ray.serve.run",
        "ray.serve.start",
        "ray.serve.api.run",
        "ray.serve.api.start",
    }
)
"""Qualified names of what starts a server or a Ray: any use of one is a live test."""

BOOT_MODULES = frozenset({"loadtests.bench", "loadtests.soak", "loadtests.run"})
"""Modules whose ``python -m`` run boots ray-tfserving."""

BOOT_SCRIPTS = frozenset({"ray-tfserving", "serve", "ray"})
"""Console scripts that start a server or a Ray, by the file name a test runs them with."""

FOLLOWED = ("tests.", "loadtests.")
"""Packages whose functions and classes are read through (the test and load harnesses)."""

_LOADS = {"LOAD_GLOBAL", "LOAD_NAME"}
_LOCALS = {"LOAD_FAST", "LOAD_DEREF", "LOAD_CLOSURE"}
_ATTRS = {"LOAD_ATTR", "LOAD_METHOD"}
_STORES = {"STORE_FAST", "STORE_NAME", "STORE_DEREF", "STORE_GLOBAL"}


def qualified(value: Any) -> str | None:
    """``module.qualname`` of a module, function or class, else None."""
    if isinstance(value, types.ModuleType):
        return value.__name__
    module, name = getattr(value, "__module__", None), getattr(value, "__qualname__", None)
    if isinstance(module, str) and isinstance(name, str):
        return f"{module}.{name}"
    return None


def _boots_value(value: Any) -> bool:
    if isinstance(value, str):
        return os.sep in value and os.path.basename(value) in BOOT_SCRIPTS
    return qualified(value) in BOOTS


def _followed(value: Any) -> Iterator[tuple[types.CodeType, dict[str, Any]]]:
    """The code of ``value`` to read on, with its globals: a function or the methods of a class
    defined in ``FOLLOWED``."""
    value = inspect.unwrap(value) if callable(value) else value
    module = getattr(value, "__module__", None)
    if not (isinstance(module, str) and module.startswith(FOLLOWED)):
        return
    if isinstance(value, types.FunctionType):
        yield value.__code__, value.__globals__
    elif isinstance(value, type):
        for member in vars(value).values():
            for f in (member, getattr(member, "fget", None), getattr(member, "func", None)):
                f = getattr(f, "__func__", f)
                if isinstance(f, types.FunctionType):
                    yield f.__code__, f.__globals__


def _resolve(dotted: str) -> Any:
    """The object a dotted name names among the modules already imported, else None."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module = sys.modules.get(".".join(parts[:cut]))
        if module is not None:
            value: Any = module
            for attr in parts[cut:]:
                value = getattr(value, attr, None)
            return value
    return None


class _Dotted(str):
    """A dotted name imported inside a function (``from ray.cluster_utils import Cluster``)."""


class Classifier:
    """Reads code for boots; remembers each code object's answer."""

    def __init__(self) -> None:
        self._seen: dict[types.CodeType, bool] = {}

    def function_boots(self, function: Callable[..., Any]) -> bool:
        """Whether the code of a test or fixture function reaches a boot."""
        function = inspect.unwrap(function)
        function = getattr(function, "__func__", function)
        if not isinstance(function, types.FunctionType):
            return False
        return self.code_boots(function.__code__, function.__globals__)

    def code_boots(self, code: types.CodeType, globals_: dict[str, Any]) -> bool:
        if code in self._seen:
            return self._seen[code]
        self._seen[code] = False  # a cycle reads as "not by this path"
        answer = self._reads_boot(code, globals_)
        self._seen[code] = answer
        return answer

    def _reads_boot(self, code: types.CodeType, globals_: dict[str, Any]) -> bool:
        for const in code.co_consts:
            if isinstance(const, types.CodeType) and self.code_boots(const, globals_):
                return True
            if isinstance(const, str) and const in BOOT_MODULES:
                return True
        local_imports: dict[str, _Dotted] = {}
        value: Any = None  # what the last instructions loaded: an object or a _Dotted name
        imported = ""  # the module of the last IMPORT_NAME
        previous: tuple[str, Any] | None = None
        for ins in instructions(code):
            op, arg = ins
            last, previous = previous, ins
            if op in _LOADS:
                value = globals_.get(arg, getattr(builtins, str(arg), None))
            elif op in _LOCALS:
                value = local_imports.get(arg)
            elif op in _ATTRS and value is not None:
                value = (
                    _Dotted(f"{value}.{arg}") if isinstance(value, _Dotted) else _attr(value, arg)
                )
            elif op == "IMPORT_NAME":
                imported = str(arg)
                fromlist = last is not None and last[0] == "LOAD_CONST" and last[1]
                value = _Dotted(imported if fromlist else imported.split(".")[0])
            elif op == "IMPORT_FROM":
                value = _Dotted(f"{imported}.{arg}")
            elif op in _STORES and isinstance(value, _Dotted):
                local_imports[str(arg)] = value
                continue
            else:
                value = None
                continue
            if isinstance(value, _Dotted):
                if value in BOOTS or self._follows_into(_resolve(value)):
                    return True
            elif value is not None and (_boots_value(value) or self._follows_into(value)):
                return True
        return False

    def _follows_into(self, value: Any) -> bool:
        if value is None:
            return False
        if qualified(value) in BOOTS:
            return True
        return any(self.code_boots(c, g) for c, g in _followed(value))


def instructions(code: types.CodeType) -> Iterator[tuple[str, Any]]:
    """``(opname, argval)`` of each instruction of ``code``: the argument's name or constant as
    ``dis.get_instructions`` reads it (the raw argument for other operations), without the line
    numbers, source positions and jump labels it works out for each instruction (most of the
    time marking a whole run's tests took went to those)."""
    names, consts = code.co_names, code.co_consts
    local = code._varname_from_oparg  # type: ignore[attr-defined]
    for _, op, arg in dis._unpack_opargs(code.co_code):  # type: ignore[attr-defined]
        if arg is None:
            yield dis.opname[op], None
        elif op == _LOAD_GLOBAL:
            yield "LOAD_GLOBAL", names[arg >> 1]  # the low bit: push a NULL first
        elif op in _NAMED:
            yield dis.opname[op], names[arg]
        elif op in _CONSTS:
            yield dis.opname[op], consts[arg]
        elif op in _LOCAL:
            yield dis.opname[op], local(arg)
        else:
            yield dis.opname[op], arg


_LOAD_GLOBAL = dis.opmap["LOAD_GLOBAL"]
_NAMED = frozenset(dis.hasname)
_CONSTS = frozenset(dis.hasconst)
_LOCAL = frozenset(dis.haslocal) | frozenset(dis.hasfree)


def _attr(value: Any, name: str) -> Any:
    """``value.name`` without running a property or ``__getattr__`` (a module's is run)."""
    try:
        if isinstance(value, types.ModuleType):
            return getattr(value, name, None)
        return inspect.getattr_static(value, name)
    except Exception:
        return None
