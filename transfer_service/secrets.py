"""Encryption of endpoint secrets at rest (Fernet), with the key from the environment or a file."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

log = logging.getLogger("transfer_service.secrets")

KEY_ENV = "MIRROR_SECRET_KEY"


class SecretKeyError(ValueError):
    """The key is missing, malformed, or does not match the stored secrets."""


class SecretBox:
    """Encrypts and decrypts short strings with one or more Fernet keys.

    The first key encrypts; every key may decrypt, so a key can be rotated by putting the new
    key first and keeping the old one after it until every secret has been rewritten.
    """

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise SecretKeyError("no secret key given")
        try:
            self._fernet = MultiFernet([Fernet(k) for k in keys])
        except ValueError as exc:
            # Fernet's own message names the expected format and never echoes the key.
            raise SecretKeyError(f"secret key is not a valid Fernet key: {exc}") from None

    def __repr__(self) -> str:
        return "SecretBox(<keys hidden>)"

    def encrypt(self, plaintext: str) -> bytes:
        return self._fernet.encrypt(plaintext.encode())

    def decrypt(self, token: bytes) -> str:
        try:
            return self._fernet.decrypt(token).decode()
        except InvalidToken:
            raise SecretKeyError(
                "a stored secret cannot be decrypted: the secret key is not the one it was "
                "encrypted with"
            ) from None


def load_or_create_key_file(path: Path) -> bytes:
    """Read the key file, creating it (mode 0600, never readable by others) when absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: two processes starting at once never both write a key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning("secret key file %s is readable by others (mode %o)", path, mode)
        key = path.read_bytes().strip()
        if not key:
            raise SecretKeyError(f"secret key file {path} is empty") from None
        return key
    key = Fernet.generate_key()
    with os.fdopen(fd, "wb") as f:
        f.write(key + b"\n")
        f.flush()
        os.fsync(f.fileno())
    log.info("created secret key file %s", path)
    return key


def load_secret_box(key_file: Path, env: dict[str, str] | None = None) -> SecretBox:
    """The box from $MIRROR_SECRET_KEY (comma-separated keys, newest first) or from `key_file`."""
    environ = os.environ if env is None else env
    value = environ.get(KEY_ENV, "").strip()
    if value:
        where, keys = f"${KEY_ENV}", [k.strip().encode() for k in value.split(",") if k.strip()]
    else:
        where, keys = f"key file {key_file}", [load_or_create_key_file(key_file)]
    try:
        return SecretBox(keys)
    except SecretKeyError as exc:
        # Say where the bad key came from and what a good one is, never the key itself.
        raise SecretKeyError(
            f"{exc} (from {where}; a key is 32 url-safe base64-encoded bytes, as "
            "cryptography's Fernet.generate_key() makes: restore the file from a backup, "
            "or see docs/operating.md on keys)"
        ) from None
