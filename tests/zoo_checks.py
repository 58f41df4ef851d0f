"""Checks shared by the published-checkpoint and LazyConfig tests (not a test module).

Used by ``tests/d2/test_publish.py``, ``tests/mm/test_publish.py`` and
``tests/d2/test_lazyconfig.py``.
"""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def import_tool(name: str) -> ModuleType:
    """``tools/<name>.py`` as a module (the tools import each other from their folder)."""
    sys.path.insert(0, str(REPO / "tools"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "tools"))


def assert_plain(value: Any, where: str = "meta") -> None:
    """Only builtin dict / list / tuple / str / int / float / bool / None, exactly (no
    subclasses: they would need their class to unpickle)."""
    if isinstance(value, dict):
        assert type(value) is dict, where
        for key, item in value.items():
            assert type(key) is str, f"{where}: key {key!r}"
            assert_plain(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        assert type(value) in (list, tuple), where
        for i, item in enumerate(value):
            assert_plain(item, f"{where}[{i}]")
    else:
        assert value is None or type(value) in (bool, int, float, str), f"{where}: {type(value)}"


def same_results(a: Any, b: Any) -> bool:
    """Exact equality of nested evaluation results, NaN equal to NaN (the COCO AP of a class
    without ground truth)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_results(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b
