"""Logins: password hashing (scrypt from the standard library), the rules for user names, the throttle on failed
logins and the signed session tokens. Pure functions and classes, no database and no web server.

A hash reads ``scrypt$n=16384,r=8,p=1$<salt>$<key>`` (salt and key in base64): the parameters travel with each
hash, so raising them later leaves old hashes verifiable.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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


# --- the throttle on failed logins --------------------------------------------------------------------------------

FREE_FAILURES = {"user name": 5, "address": 20}  # an address gets more: a team behind one NAT address shares it
FIRST_WAIT = 1.0  # seconds after the last free failure; each failure after it doubles the wait ...
MAX_WAIT = 900.0  # ... up to 15 minutes: at most ~100 guesses a day at one name once the wait is at its cap
FORGET = 3600.0  # failures are forgotten after an hour without one
MAX_KEYS = 100_000  # names and addresses tracked (~20 MB); beyond, the oldest are forgotten first


@dataclass
class _Failures:
    count: int
    last: float  # time of the last failure


class LoginThrottle:
    """Exponential backoff after failed logins, per user name and per client address.

    A user name gets ``FREE_FAILURES`` failed logins, then every further failure doubles the wait before its next
    attempt (1 s, 2 s, 4 s, ... up to ``MAX_WAIT``); the same holds for an address. A successful login clears its
    name's failures (not its address's: an attacker with an account of their own must not be able to wipe the
    count of the names they spray). An attempt refused while waiting checks no password and counts for nothing.
    Times are passed in (seconds, any monotonic clock); not thread-safe: one event loop calls it.
    """

    def __init__(self) -> None:
        self._failures: dict[tuple[str, str], _Failures] = {}

    def _keys(self, username: str, address: str) -> list[tuple[str, str]]:
        return [("user name", username[:64]), ("address", address)]  # no valid name is longer than 64

    def retry_after(self, username: str, address: str, now: float) -> tuple[float, str]:
        """(seconds to wait, "user name" or "address": what is throttled); (0, "") when the attempt may go ahead."""
        longest = (0.0, "")
        for key in self._keys(username, address):
            failures = self._failures.get(key)
            if failures is None or failures.count < FREE_FAILURES[key[0]]:
                continue
            wait = min(MAX_WAIT, FIRST_WAIT * 2 ** (failures.count - FREE_FAILURES[key[0]]))
            longest = max(longest, (failures.last + wait - now, key[0]))
        return longest if longest[0] > 0 else (0.0, "")

    def failed(self, username: str, address: str, now: float) -> None:
        if len(self._failures) >= MAX_KEYS:
            self._forget(now)
        for key in self._keys(username, address):
            failures = self._failures.get(key)
            if failures is None or now - failures.last > FORGET:
                failures = self._failures[key] = _Failures(0, now)
            failures.count, failures.last = failures.count + 1, now

    def succeeded(self, username: str) -> None:
        self._failures.pop(("user name", username[:64]), None)

    def _forget(self, now: float) -> None:
        recent = sorted((f.last, key) for key, f in self._failures.items() if now - f.last <= FORGET)
        self._failures = {key: self._failures[key] for _, key in recent[-MAX_KEYS // 2 :]}


def throttle_message(seconds: float, what: str) -> str:
    """What the login page says to a throttled attempt."""
    where = "for this user name" if what == "user name" else "from this address"
    return f"Too many failed logins {where}. Try again in {max(1, round(seconds))} s."


# --- session tokens -----------------------------------------------------------------------------------------------

SESSION_SECONDS = 12 * 3600  # a working day: after it, log in again


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _signature(secret: bytes, payload: str, user_key: str) -> str:
    return _b64url(hmac.new(secret, f"{payload}\n{user_key}".encode(), hashlib.sha256).digest())


def session_token(secret: bytes, username: str, user_key: str, now: float) -> str:
    """A session cookie's value: the user name and the time (wall clock, s) it was issued, signed with ``secret``.

    ``user_key`` (the user's password hash) is signed along but not written in the token: resetting the password
    changes it, and with it ends every session of that user.
    """
    payload = f"{_b64url(username.encode())}.{int(now)}"
    return f"{payload}.{_signature(secret, payload, user_key)}"


def session_user(secret: bytes, token: str, user_key: Callable[[str], str | None], now: float) -> str | None:
    """The user name of a valid token; None for a forged, expired or malformed one, or when ``user_key`` (the
    user's current password hash) gives None (an unknown or disabled user) or another key than the token's."""
    try:
        name, issued, signature = token.split(".")
        username = base64.urlsafe_b64decode(name + "=" * (-len(name) % 4)).decode()
        age = now - int(issued)
    except (ValueError, UnicodeDecodeError):  # binascii.Error is a ValueError
        return None
    if not -60 <= age <= SESSION_SECONDS:  # a minute of clock skew between two servers of one database
        return None
    key = user_key(username)
    if key is None or not hmac.compare_digest(signature, _signature(secret, f"{name}.{issued}", key)):
        return None
    return username


def load_secret(path: Path) -> bytes:
    """The key that signs session tokens, kept in ``path``: created on first use (mode 0600, 32 random bytes), so
    sessions outlive a restart of the server. Deleting the file logs everyone out at the next start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        # Written whole under a temporary name, then linked into place: a second server starting at the same
        # moment either links first or reads the complete file of the first, never a half-written one.
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
    text = path.read_text().strip()
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise ValueError(
            f"{path} does not hold a session secret (64 hex digits): delete it and start again (everyone will "
            "have to log in again)."
        )
    return bytes.fromhex(text)


class ReadEvery:
    """A value per user, read with ``read`` at most every ``seconds``; while reading raises one of ``down`` (the
    database does not answer), the last value read stands, and a user never read raises."""

    def __init__(self, read: Callable[[str], str | None], seconds: float, down: tuple[type[Exception], ...]):
        self.read, self.seconds, self.down = read, seconds, down
        self._values: dict[str, tuple[str | None, float]] = {}

    def __call__(self, username: str) -> str | None:
        now = time.monotonic()
        value, fetched = self._values.get(username, (None, -self.seconds))
        if now - fetched >= self.seconds:
            if len(self._values) > 10_000:  # forged tokens naming random users must not grow it without end
                self._values.clear()
            try:
                value = self.read(username)
            except self.down:
                if username not in self._values:
                    raise
                return value
            self._values[username] = (value, now)
        return value

    def forget(self, username: str) -> None:
        """Read the user's value afresh next time (it was just changed here)."""
        self._values.pop(username, None)
