"""Every module of the product and of its dev tools imports: a broken import in a tool the
suite does not run (a benchmark, the dev runner) is found here, not by the next user."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import dev
import gateway
import workers

MODULES = sorted(
    info.name
    for package in (gateway, workers, dev)
    for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}.")
    if not info.name.endswith(".__main__")  # a program: importing it runs it
)


def test_every_package_is_walked() -> None:
    assert {"gateway.app", "workers.worker", "dev.bench.proxy", "dev.ports"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name: str) -> None:
    importlib.import_module(name)
