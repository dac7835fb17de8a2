"""The store suite of tests/unit/server run on KubeStore: one suite, two backends (DESIGN §7).

Every test function there that takes the ``store`` fixture is collected here too, with the
fixtures of this folder's conftest (a KubeStore on a real kube-apiserver, a namespace per
test). A new test of the suite joins by itself.
"""

from __future__ import annotations

import inspect

from tests.unit.server import (
    test_store,
    test_store_core,
    test_store_sessions,
    test_tokens,
    test_users,
)

_SUITE = (test_store, test_store_core, test_store_sessions, test_tokens, test_users)


def _suite_tests() -> dict[str, object]:
    found: dict[str, object] = {}
    for module in _SUITE:
        for name, test in vars(module).items():
            if name.startswith("test_") and callable(test):
                if "store" not in inspect.signature(test).parameters:
                    continue  # SQLite's own (schema, migrations) or no store at all
                if name in found:
                    raise AssertionError(f"two suite tests are named {name}")
                found[name] = test
    return found


globals().update(_suite_tests())
