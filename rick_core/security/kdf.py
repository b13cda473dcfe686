"""scrypt: the slow hash that turns something a person types (a vault
passphrase, a trading PIN) into key material, and the bounds rick checks on
scrypt parameters read back from a file."""

from __future__ import annotations

import base64
import secrets
import unicodedata
from collections.abc import Mapping
from typing import Any, Final

from attrs import frozen

__all__ = ["DEFAULT_SCRYPT", "ScryptParams", "check_scrypt", "new_scrypt", "scrypt_derive"]


@frozen
class ScryptParams:
    """scrypt cost parameters for a new hash (an existing one keeps its own)."""

    n: int = 2**15
    r: int = 8
    p: int = 1


DEFAULT_SCRYPT: Final = ScryptParams()


def new_scrypt(params: ScryptParams, salt_bytes: int) -> dict[str, Any]:
    """A kdf description ``{"name": "scrypt", "salt", "n", "r", "p"}`` with a new random salt."""
    return {
        "name": "scrypt",
        "salt": base64.b64encode(secrets.token_bytes(salt_bytes)).decode("ascii"),
        "n": params.n,
        "r": params.r,
        "p": params.p,
    }


def check_scrypt(kdf: Any, *, min_salt: int) -> dict[str, Any]:
    """``kdf`` if it is a scrypt description rick accepts (bounded costs), else
    ValueError: an edited file cannot make rick spend minutes or gigabytes."""
    if not isinstance(kdf, dict) or set(kdf) != {"name", "salt", "n", "r", "p"}:
        raise ValueError("unknown kdf")
    n, r, p = kdf["n"], kdf["r"], kdf["p"]
    if kdf["name"] != "scrypt" or not all(type(v) is int for v in (n, r, p)):
        raise ValueError("unknown kdf")
    if not (2 <= n <= 2**20 and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16):
        raise ValueError("scrypt parameters out of range")
    if 128 * n * r > 2**26:  # scrypt needs 128 * n * r bytes: at most 64 MiB
        raise ValueError("scrypt parameters out of range")
    if n * r * p > 2**22:  # the work: a few seconds at most
        raise ValueError("scrypt parameters out of range")
    salt = kdf["salt"]
    if not isinstance(salt, str) or len(base64.b64decode(salt, validate=True)) < min_salt:
        raise ValueError("scrypt salt too short")
    return dict(kdf)


def scrypt_derive(secret: str, kdf: Mapping[str, Any], length: int) -> bytes:
    """``length`` bytes from ``secret`` (NFC-normalised) under a checked ``kdf``."""
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    salt = base64.b64decode(kdf["salt"], validate=True)
    data = unicodedata.normalize("NFC", secret).encode("utf-8")
    return Scrypt(salt=salt, length=length, n=kdf["n"], r=kdf["r"], p=kdf["p"]).derive(data)
