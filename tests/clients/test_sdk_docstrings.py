"""Every public class, function, method and property of the SDK's public modules has its own
docstring (issue 15: `help(mirror.client.Client)` is how people read the SDK).

Public: a name without a leading underscore, defined in the module (not imported into it),
and the public names each class defines itself (inherited ones are checked where they are
defined). A docstring inherited from a base class does not count: a subclass says what it is.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Iterator
from enum import Enum
from types import ModuleType
from typing import Any

import mirror
import pytest

# The modules docs/sdk.md and the README teach (mirror/__init__ exports nothing more).
MODULES = ["mirror.cmdline", "mirror.client", "mirror.aio", "mirror.errors", "mirror.enums",
           "mirror.channel", "mirror.policyfields"]


def _own_doc(obj: Any) -> str:
    """The docstring `obj` itself carries (not one `inspect.getdoc` would inherit)."""
    if isinstance(obj, property):
        return (obj.__doc__ or "") if obj.fget is None else (obj.fget.__doc__ or "")
    if isinstance(obj, classmethod | staticmethod):
        obj = obj.__func__
    if inspect.isclass(obj):
        return str(obj.__dict__.get("__doc__") or "")
    return getattr(obj, "__doc__", None) or ""


def _defined_in(obj: Any, module: ModuleType) -> bool:
    return getattr(obj, "__module__", None) == module.__name__


def _class_members(cls: type) -> Iterator[tuple[str, Any]]:
    if issubclass(cls, Enum):
        return  # members are values, documented by the enum's docstring
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        raw = value.__func__ if isinstance(value, classmethod | staticmethod) else value
        if isinstance(value, property) or inspect.isfunction(raw):
            yield name, value


def undocumented(module_name: str) -> list[str]:
    """`module.name` and `module.Class.member` of every public member without a docstring."""
    module = importlib.import_module(module_name)
    missing = [] if _own_doc(module).strip() else [module_name]
    for name, obj in vars(module).items():
        if name.startswith("_") or not _defined_in(obj, module):
            continue
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if not _own_doc(obj).strip():
            missing.append(f"{module_name}.{name}")
        if inspect.isclass(obj):
            missing += [f"{module_name}.{name}.{member}" for member, value in
                        _class_members(obj) if not _own_doc(value).strip()]
    return missing


def test_mirror_exports_no_other_module() -> None:
    # If mirror/__init__ starts re-exporting names, their modules belong in MODULES.
    public = [n for n in vars(mirror) if not n.startswith("_")]
    assert set(public) <= {m.rsplit(".", 1)[1] for m in MODULES} | {"v1", "cli", "_build"}


@pytest.mark.parametrize("module_name", MODULES)
def test_every_public_member_has_a_docstring(module_name: str) -> None:
    missing = undocumented(module_name)
    assert not missing, "no docstring: " + ", ".join(missing)


def test_the_walk_finds_what_lacks_one() -> None:
    # The check itself: a class, a method, a property and an enum without docstrings.
    probe = ModuleType("probe", "A module.")

    class Bare:
        def method(self) -> None:
            pass

        @property
        def prop(self) -> int:
            return 1

    class Told:
        """Told."""

        def method(self) -> None:
            """Does it."""

    class Sub(Told):
        pass

    for cls in (Bare, Told, Sub):
        cls.__module__ = "probe"
        setattr(probe, cls.__name__, cls)
    sys.modules["probe"] = probe
    try:
        assert undocumented("probe") == ["probe.Bare", "probe.Bare.method", "probe.Bare.prop",
                                         "probe.Sub"]
    finally:
        del sys.modules["probe"]
