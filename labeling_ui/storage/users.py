"""``LabelStore``'s users: accounts, roles, passwords and what a session is signed with."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from labeling_ui.db import ROLES, Ranking, Skip, User, utcnow
from labeling_ui.storage.base import StoreBase, iso
from labeling_ui.users import check_username, dummy_hash, hash_password, verify_password


class Users(StoreBase):
    def add_user(self, username: str, password: str, role: str = "labeler", simulated: bool = False) -> None:
        check_username(username)
        if role not in ROLES:
            raise ValueError(f"Unknown role {role!r}: use one of {', '.join(ROLES)}.")
        if not isinstance(password, str) or not password:
            raise ValueError("The password must not be empty.")
        user = User(
            username=username,
            password_hash=hash_password(password),
            role=role,
            active=True,
            simulated=simulated,
            created_at=utcnow(),
        )
        try:
            with self._begin() as session:
                if self._find_user(session, username) is not None:
                    raise ValueError(f"User {username!r} already exists.")
                session.add(user)
        except IntegrityError as error:  # added by someone else between the check and the insert
            raise ValueError(f"User {username!r} already exists.") from error

    def verify_user(self, username: str, password: str) -> bool:
        with self._read() as session:
            user = self._find_user(session, username)
            encoded = user.password_hash if user is not None and user.active else None
        if encoded is None:
            verify_password(password, dummy_hash())
            return False
        return verify_password(password, encoded)

    def set_active(self, username: str, active: bool) -> None:
        """Disable (False) or enable again (True): a disabled user can no longer log in or get new items; what they
        submitted stays."""
        with self._begin() as session:
            user = self._find_user(session, username)
            if user is None:
                raise ValueError(f"No user {username!r}.")
            user.active = active

    def reset_password(self, username: str, password: str) -> None:
        """Replace the user's password; the old one no longer works and their open sessions end (see session_key)."""
        if not isinstance(password, str) or not password:
            raise ValueError("The password must not be empty.")
        password_hash = hash_password(password)  # ~50 ms, outside the write transaction
        with self._begin() as session:
            user = self._find_user(session, username)
            if user is None:
                raise ValueError(f"No user {username!r}.")
            user.password_hash = password_hash

    def session_key(self, username: str) -> str | None:
        """What a session token of the user is signed with: their password hash, so a reset ends their sessions;
        None for an unknown or disabled user (no session of theirs is valid)."""
        with self._read() as session:
            user = self._find_user(session, username)
            return user.password_hash if user is not None and user.active else None

    def role(self, username: str) -> str | None:
        """'labeler' or 'admin'; None for an unknown or disabled user."""
        with self._read() as session:
            user = self._find_user(session, username)
            return user.role if user is not None and user.active else None

    def list_users(self) -> list[dict]:
        """Every user by name, with their current rankings and their skips."""
        with self._read() as session:
            rankings = self._counts_by_user(session, sa.select(Ranking.user_id).where(Ranking.is_current))
            skips = self._counts_by_user(session, sa.select(Skip.user_id))
            users = session.scalars(sa.select(User).order_by(User.username)).all()
        return [
            {
                "username": u.username,
                "role": u.role,
                "active": u.active,
                "simulated": u.simulated,
                "created_at": iso(u.created_at),
                "n_rankings": rankings.get(u.id, 0),
                "n_skips": skips.get(u.id, 0),
            }
            for u in users
        ]

    @staticmethod
    def _counts_by_user(session: Session, user_ids: sa.Select) -> dict[int, int]:
        """{user id: rows} of a query that selects one user id per row."""
        query = user_ids.subquery()
        counted = sa.select(query.c.user_id, sa.func.count()).group_by(query.c.user_id)
        return dict(session.execute(counted).tuples().all())
