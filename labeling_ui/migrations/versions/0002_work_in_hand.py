"""The work in hand: the item queue (assignment by index), one lease and one draft per labeler, admins' reviews.

- ``item_queue``: one row per item with its number of current rankings, filled from the rankings already stored;
  ``ix_item_queue_next`` (is_gold, n_rankings, seq) is the order items are handed out in; ``item_queue_counts``:
  how many items have each number of rankings.
- ``assignments``: one lease per labeler (``uq_assignments_user_id``); leases whose holder already ranked or
  skipped the item are dropped first (the old code left them until the holder's next item), then all but the
  newest of a labeler.
- ``drafts``: a labeler's unfinished ranks, flags and comment; ``item_reviews``: excluded from the export, reviewed.
- ``ix_skips_user_id``: a labeler's skips, read for their progress.

The models are in ``labeling_ui.db``.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "item_queue",
        sa.Column("item_id", sa.String(length=64), nullable=False),
        sa.Column("is_gold", sa.Boolean(), nullable=False),
        sa.Column("n_rankings", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["item_id"], ["items.id"], name=op.f("fk_item_queue_item_id_items")),
        sa.PrimaryKeyConstraint("item_id", name=op.f("pk_item_queue")),
    )
    op.execute(
        "INSERT INTO item_queue (item_id, is_gold, n_rankings, seq) "
        "SELECT items.id, items.is_gold, "
        "(SELECT count(*) FROM rankings WHERE rankings.item_id = items.id AND rankings.is_current), items.seq "
        "FROM items"
    )
    op.create_index("ix_item_queue_next", "item_queue", ["is_gold", "n_rankings", "seq"], unique=False)
    op.create_table(
        "item_queue_counts",
        sa.Column("is_gold", sa.Boolean(), nullable=False),
        sa.Column("n_rankings", sa.Integer(), nullable=False),
        sa.Column("items", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("is_gold", "n_rankings", name=op.f("pk_item_queue_counts")),
    )
    op.execute(
        "INSERT INTO item_queue_counts (is_gold, n_rankings, items) "
        "SELECT is_gold, n_rankings, count(*) FROM item_queue GROUP BY is_gold, n_rankings"
    )

    op.execute(
        "DELETE FROM assignments WHERE "
        "EXISTS (SELECT 1 FROM rankings r WHERE r.item_id = assignments.item_id AND r.user_id = assignments.user_id) "
        "OR EXISTS (SELECT 1 FROM skips s WHERE s.item_id = assignments.item_id AND s.user_id = assignments.user_id)"
    )
    op.execute(
        "DELETE FROM assignments WHERE EXISTS (SELECT 1 FROM assignments newer "
        "WHERE newer.user_id = assignments.user_id AND (newer.assigned_at > assignments.assigned_at "
        "OR (newer.assigned_at = assignments.assigned_at AND newer.item_id > assignments.item_id)))"
    )
    op.create_index("uq_assignments_user_id", "assignments", ["user_id"], unique=True)
    op.create_index("ix_skips_user_id", "skips", ["user_id"], unique=False)

    op.create_table(
        "drafts",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.String(length=64), nullable=False),
        sa.Column("draft", sa.JSON(), nullable=False),
        sa.Column("saved_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["item_id"], ["items.id"], name=op.f("fk_drafts_item_id_items")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_drafts_user_id_users")),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_drafts")),
    )
    op.create_table(
        "item_reviews",
        sa.Column("item_id", sa.String(length=64), nullable=False),
        sa.Column("excluded", sa.Boolean(), nullable=False),
        sa.Column("reviewed", sa.Boolean(), nullable=False),
        sa.Column("reviewed_by", sa.String(length=64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["item_id"], ["items.id"], name=op.f("fk_item_reviews_item_id_items")),
        sa.PrimaryKeyConstraint("item_id", name=op.f("pk_item_reviews")),
    )


def downgrade() -> None:
    op.drop_table("item_reviews")
    op.drop_table("drafts")
    op.drop_index("ix_skips_user_id", table_name="skips")
    op.drop_index("uq_assignments_user_id", table_name="assignments")
    op.drop_table("item_queue_counts")
    op.drop_index("ix_item_queue_next", table_name="item_queue")
    op.drop_table("item_queue")
