"""Secrets the platform generates for itself (admin token, erasure key), kept in files only the owner reads."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def read_or_create_secret(path: Path, *, prefix: str = "", nbytes: int = 32) -> str:
    """The secret in ``path``; a new random one is written (mode 600) when the file does not exist.

    The file appears whole (written aside, then hard-linked into place), and a link never replaces
    an existing file, so two processes starting at once agree on one secret.
    """
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    value = prefix + secrets.token_urlsafe(nbytes)
    aside = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(value + "\n")
    try:
        os.link(aside, path)
    except FileExistsError:
        return _read(path)  # another process won the race
    finally:
        aside.unlink()
    return value


def _read(path: Path) -> str:
    value = path.read_text().strip()
    if not value:
        raise ValueError(f"{path} is empty: delete it to have a new secret generated")
    return value
