"""Shared fixtures: every test starts from an environment with no Familiar-Connect settings."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from familiar_connect.settings import Settings

# Variables that could leak in from the developer's shell and change what a test sees.
_SETTINGS_VARS = {name.upper() for name in Settings.model_fields}


@pytest.fixture(autouse=True, name="clean_env")
def _clean_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    for name in list(os.environ):
        upper = name.upper()
        if upper in _SETTINGS_VARS or upper.startswith("FAMILIAR_MASTER_KEY_V"):
            monkeypatch.delenv(name, raising=False)
    # Run from an empty directory so a developer's ./.env is never read.
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    yield
