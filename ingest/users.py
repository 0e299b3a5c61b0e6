"""The dashboard's users: one file, a `name:hash` line per user, managed by `custom-ingest user add|remove|list`.

Hashes are argon2id from argon2-cffi with its default (RFC 9106 low-memory) parameters, never a hash of our own: a
stolen file costs an attacker ~50 ms and 64 MiB per guess. The file is written whole beside itself, mode 0600, then
renamed over the old one, so a crash never leaves half a file and other local users never read the hashes. The
running dashboard reads it again when it changes (`UsersFile`), so adding or removing a user needs no restart and a
removed user's sessions end at their next request.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import threading
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
MIN_PASSWORD = 12
_HASHER = PasswordHasher()
_DUMMY = _HASHER.hash("a password nobody has")  # unknown users cost the same time as known ones


class UsersError(ValueError):
    """The users file cannot be read or used; the message is one line naming the file."""


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise UsersError(f"user name {name[:64]!r}: 1-64 of letters, digits, '_', '.', '@', '-'")
    return name


def load_users(path: Path) -> dict[str, str]:
    """name -> argon2 hash; a missing file is no users (the caller decides whether that may serve)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise UsersError(f"{path}: cannot read ({exc.__class__.__name__}: {exc})") from None
    users: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, hashed = line.partition(":")
        if not sep or not NAME.fullmatch(name) or not hashed.startswith("$argon2"):
            raise UsersError(f"{path}:{number}: not `name:argon2-hash` (write it with `custom-ingest user add`)")
        users[name] = hashed
    return users


def save_users(path: Path, users: dict[str, str]) -> None:
    """Atomically, mode 0600 (umask cannot widen it: mkstemp creates the file 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write("# custom-ingest dashboard users (custom-ingest user add|remove|list); argon2id hashes\n")
            out.writelines(f"{name}:{hashed}\n" for name, hashed in sorted(users.items()))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def add_user(path: Path, name: str, password: str) -> bool:
    """Add or re-password `name`; True when the user is new."""
    check_name(name)
    if len(password) < MIN_PASSWORD:
        raise UsersError(f"password for {name!r}: at least {MIN_PASSWORD} characters")
    users = load_users(path)
    new = name not in users
    users[name] = _HASHER.hash(password)
    save_users(path, users)
    return new


def remove_user(path: Path, name: str) -> bool:
    """True when `name` was there."""
    users = load_users(path)
    if users.pop(name, None) is None:
        return False
    save_users(path, users)
    return True


def verify(users: dict[str, str], name: str, password: str) -> bool:
    """Whether `password` is `name`'s; an unknown name takes as long as a wrong password (no user enumeration)."""
    try:
        return _HASHER.verify(users.get(name, _DUMMY), password) and name in users
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


class UsersFile:
    """The users file as the dashboard sees it: re-read whenever its size or modification time changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, str] = {}

    def current(self) -> dict[str, str]:
        try:
            st = self.path.stat()
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        with self._lock:
            if stamp != self._stamp:
                try:
                    self._users = load_users(self.path) if stamp else {}
                except UsersError:
                    self._users = {}  # a broken file lets nobody in until it is fixed (the log says why at login)
                self._stamp = stamp
            return self._users
