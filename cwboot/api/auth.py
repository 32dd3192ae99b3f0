"""Bearer-token authentication: admin tokens read and write, read tokens only read.

Tokens come from ``api.admin_tokens``, ``api.read_tokens`` and the admin token
file: ``api.admin_token_file``, or ``<head.state_dir>/admin.token`` when that
is empty. The head creates the file (mode 0600, a random token) when it is
missing, so a fresh install has exactly one admin token that only root can
read; the CLI reads the same file.
"""

from __future__ import annotations

import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cwboot.config import ApiConfig, Config

ADMIN_TOKEN_FILENAME = "admin.token"


@dataclass(frozen=True)
class Tokens:
    admin: tuple[str, ...] = ()
    read: tuple[str, ...] = ()

    def role_of(self, token: str) -> str | None:
        """``"admin"``, ``"read"`` or None. Compares in constant time against every token."""
        role = None
        for candidate in self.admin:
            if hmac.compare_digest(candidate.encode(), token.encode()):
                role = "admin"
        for candidate in self.read:
            if hmac.compare_digest(candidate.encode(), token.encode()) and role is None:
                role = "read"
        return role


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def admin_token_path(config: Config | ApiConfig) -> Path | None:
    """Where the admin token file is: ``api.admin_token_file`` or ``<state_dir>/admin.token``."""
    api = config.api if isinstance(config, Config) else config
    if api.admin_token_file:
        return Path(api.admin_token_file)
    if isinstance(config, Config):
        return config.state_dir / ADMIN_TOKEN_FILENAME
    return None


def read_token_file(path: Path) -> str:
    """The token in ``path`` (first line, stripped); OSError/ValueError if unreadable or empty."""
    text = path.read_text().strip()
    if not text:
        raise ValueError(f"token file {path} is empty")
    return text.splitlines()[0].strip()


def ensure_token_file(path: Path) -> str:
    """Read the token in ``path``, creating the file (0600, random token) if it is missing."""
    try:
        return read_token_file(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return read_token_file(path)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def tokens_from_config(config: Config | ApiConfig, *, create_token_file: bool = True) -> Tokens:
    """Every token the API accepts; empty strings are never tokens."""
    api = config.api if isinstance(config, Config) else config
    admin = [t for t in api.admin_tokens if t]
    path = admin_token_path(config)
    if path is not None:
        if create_token_file:
            admin.append(ensure_token_file(path))
        elif path.exists():
            admin.append(read_token_file(path))
    return Tokens(tuple(admin), tuple(t for t in api.read_tokens if t))
