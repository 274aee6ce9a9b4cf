"""The one exception hierarchy lives in bitcoind_paychan/errors.py (ARCHITECTURE.md,
"Errors"): no module of the package defines an exception class of its own, except the few
that never leave their module, each named with its reason in errors.py's docstring."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import bitcoind_paychan
from bitcoind_paychan import errors

# Defined beside their one user, never raised out of it (errors.py's docstring says why).
LOCAL = {
    "bitcoind_paychan.cli": "UsageError",
    "bitcoind_paychan.daemon.config.reader": "Problem",
    "bitcoind_paychan.node.monitor": "_MissingHeader",
}
HARNESS = "bitcoind_paychan.regtest"  # the regtest harness installed beside: not the product


def exception_classes() -> dict[str, set[str]]:
    """Each module of the package → the exception classes it defines."""
    found: dict[str, set[str]] = {}
    for module in pkgutil.walk_packages(bitcoind_paychan.__path__, "bitcoind_paychan."):
        if module.name == HARNESS or module.name.startswith(HARNESS + "."):
            continue
        loaded = importlib.import_module(module.name)
        defined = {name for name, value in vars(loaded).items()
                   if inspect.isclass(value) and issubclass(value, BaseException)
                   and value.__module__ == module.name}
        if defined:
            found[module.name] = defined
    return found


def test_every_exception_class_is_defined_in_errors_py() -> None:
    found = exception_classes()
    assert found.pop("bitcoind_paychan.errors") >= {"PaychanError", "RpcError", "ControlError"}
    assert {module: names for module, names in found.items()} == {
        module: {name} for module, name in LOCAL.items()}


def test_the_errors_docstring_says_why_each_local_exception_lives_elsewhere() -> None:
    doc = errors.__doc__ or ""
    assert all(name in doc for name in LOCAL.values())
    assert "tests/test_errors.py" in doc
