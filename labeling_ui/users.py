"""Password hashing (scrypt from the standard library) and the rules for user names.

A hash reads ``scrypt$n=16384,r=8,p=1$<salt>$<key>`` (salt and key in base64): the parameters travel with each
hash, so raising them later leaves old hashes verifiable.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
import secrets

N, R, P = 2**14, 8, 1  # about 16 MiB and 50 ms per hash: cheap for a login, costly for guessing
_USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * n * r, dklen=32)


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    return f"scrypt$n={N},r={R},p={P}${_b64(salt)}${_b64(_scrypt(password, salt, N, R, P))}"


def verify_password(password: str, encoded: str) -> bool:
    """True if ``password`` matches the hash; False for a wrong password or a malformed hash."""
    try:
        scheme, params, salt, key = encoded.split("$")
        values = dict(item.split("=") for item in params.split(","))
        n, r, p = int(values["n"]), int(values["r"]), int(values["p"])
        if scheme != "scrypt":
            return False
        return hmac.compare_digest(_scrypt(password, base64.b64decode(salt), n, r, p), base64.b64decode(key))
    except (ValueError, KeyError):
        return False


@functools.cache
def dummy_hash() -> str:
    """Checked when the user does not exist: as slow as a real check, so timing does not tell which names exist."""
    return hash_password(secrets.token_urlsafe(16))


def generate_password() -> str:
    return secrets.token_urlsafe(12)


def check_username(username: str) -> str:
    """The user name if it is acceptable; ValueError saying what is allowed otherwise."""
    if not _USERNAME.fullmatch(username or ""):
        raise ValueError(
            f"Invalid user name {username!r}: use 1 to 64 letters, digits, '_', '.', '@' or '-', "
            "starting with a letter or digit."
        )
    return username
