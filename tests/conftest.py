"""Session-wide test setup: lowbit's on-disk caches (kernel latencies, layer sensitivities)
live in a temporary ``$XDG_CACHE_HOME`` for the session, so tests neither read a developer's
cache nor write into it, and every run starts cold."""

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_cache_home(tmp_path_factory):
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if before is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = before
