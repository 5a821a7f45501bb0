"""The initial schema: users, items, append-only rankings, skips and assignment leases.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("simulated", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("role IN ('labeler', 'admin')", name=op.f("ck_users_role")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("username", name=op.f("uq_users_username")),
    )
    op.create_table(
        "items",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("prompt_id", sa.String(length=255), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("prompt_messages", sa.JSON(), nullable=False),
        sa.Column("candidates", sa.JSON(), nullable=False),
        sa.Column("is_gold", sa.Boolean(), nullable=False),
        sa.Column("gold_ranking", sa.JSON(), nullable=True),
        sa.Column("provenance", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_items")),
        sa.UniqueConstraint("seq", name=op.f("uq_items_seq")),
    )
    op.create_index(op.f("ix_items_prompt_id"), "items", ["prompt_id"], unique=False)
    op.create_table(
        "rankings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("submission_id", sa.String(length=128), nullable=False),
        sa.Column("item_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("is_current", sa.Boolean(), nullable=False),
        sa.Column("ranks", sa.JSON(), nullable=False),
        sa.Column("none_acceptable", sa.Boolean(), nullable=False),
        sa.Column("flags", sa.JSON(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("guidelines_version", sa.String(length=64), nullable=False),
        sa.Column("display_order", sa.JSON(), nullable=False),
        sa.Column("seconds_spent", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["item_id"], ["items.id"], name=op.f("fk_rankings_item_id_items")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_rankings_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rankings")),
        sa.UniqueConstraint("item_id", "user_id", "version", name=op.f("uq_rankings_item_id_user_id_version")),
        sa.UniqueConstraint("submission_id", name=op.f("uq_rankings_submission_id")),
    )
    op.create_index("ix_rankings_user_id", "rankings", ["user_id"], unique=False)
    op.create_index(
        "uq_rankings_current",
        "rankings",
        ["item_id", "user_id"],
        unique=True,
        sqlite_where=sa.text("is_current"),
        postgresql_where=sa.text("is_current"),
    )
    op.create_table(
        "skips",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("submission_id", sa.String(length=128), nullable=False),
        sa.Column("item_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["item_id"], ["items.id"], name=op.f("fk_skips_item_id_items")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_skips_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_skips")),
        sa.UniqueConstraint("item_id", "user_id", name=op.f("uq_skips_item_id_user_id")),
        sa.UniqueConstraint("submission_id", name=op.f("uq_skips_submission_id")),
    )
    op.create_table(
        "assignments",
        sa.Column("item_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["item_id"], ["items.id"], name=op.f("fk_assignments_item_id_items")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_assignments_user_id_users")),
        sa.PrimaryKeyConstraint("item_id", "user_id", name=op.f("pk_assignments")),
    )


def downgrade() -> None:
    op.drop_table("assignments")
    op.drop_table("skips")
    op.drop_index("uq_rankings_current", table_name="rankings")
    op.drop_index("ix_rankings_user_id", table_name="rankings")
    op.drop_table("rankings")
    op.drop_index(op.f("ix_items_prompt_id"), table_name="items")
    op.drop_table("items")
    op.drop_table("users")
