from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from clm_shared.secrets import read_or_create_secret


def test_a_secret_is_created_once_owner_only_and_then_read_back(tmp_path: Path) -> None:
    path = tmp_path / "data" / "admin-token"
    first = read_or_create_secret(path, prefix="clmtk_")
    assert first.startswith("clmtk_") and len(first) > 30
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_or_create_secret(path, prefix="clmtk_") == first
    assert [p.name for p in path.parent.iterdir()] == ["admin-token"]


def test_processes_starting_at_once_agree_on_one_secret(tmp_path: Path) -> None:
    path = tmp_path / "key"
    with ThreadPoolExecutor(8) as pool:
        values = set(pool.map(lambda _: read_or_create_secret(path), range(32)))
    assert values == {path.read_text().strip()}


def test_an_empty_secret_file_is_refused_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("\n")
    with pytest.raises(ValueError, match="key is empty"):
        read_or_create_secret(path)
