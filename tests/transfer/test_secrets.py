"""Fernet key handling: key file created 0600, env key, wrong key detected, repr hides keys."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from transfer_service.secrets import KEY_ENV, SecretBox, SecretKeyError, load_secret_box


def test_key_file_created_with_mode_0600_and_reused(tmp_path: Path) -> None:
    key_file = tmp_path / "data" / "secret.key"
    box = load_secret_box(key_file, env={})
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    token = box.encrypt("hunter2")
    assert b"hunter2" not in token
    # A second start reads the same key and can decrypt what the first one wrote.
    again = load_secret_box(key_file, env={})
    assert again.decrypt(token) == "hunter2"


def test_env_key_takes_precedence_and_supports_rotation(tmp_path: Path) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    token_old = load_secret_box(tmp_path / "k", env={KEY_ENV: old}).encrypt("s3")
    rotated = load_secret_box(tmp_path / "k", env={KEY_ENV: f"{new},{old}"})
    assert rotated.decrypt(token_old) == "s3"
    # New secrets are written with the first (new) key only.
    assert load_secret_box(tmp_path / "k", env={KEY_ENV: new}).decrypt(rotated.encrypt("x")) == "x"
    assert not (tmp_path / "k").exists()


def test_wrong_key_is_a_clear_error() -> None:
    token = SecretBox([Fernet.generate_key()]).encrypt("pw")
    with pytest.raises(SecretKeyError, match="not the one it was encrypted with"):
        SecretBox([Fernet.generate_key()]).decrypt(token)


def test_malformed_key_rejected_without_echoing_it() -> None:
    with pytest.raises(SecretKeyError) as info:
        SecretBox([b"not-a-key-but-a-password"])
    assert "not-a-key-but-a-password" not in str(info.value)


def test_repr_hides_keys() -> None:
    key = Fernet.generate_key()
    assert key.decode() not in repr(SecretBox([key]))
