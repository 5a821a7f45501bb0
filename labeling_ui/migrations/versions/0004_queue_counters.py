"""Counters kept with the queue: leases in the queue's counts, and each labeler's done items by queue state.

- ``assignments.counted``: whether the counters hold the lease; every lease stored is counted here, and the store
  lets go of the ones that ran out the first time it settles the counters (it alone knows ``lease_seconds``).
- ``item_queue.n_held``: an item's counted leases; ``ix_assignments_counted`` finds the leases to settle.
- ``item_queue_counts`` is keyed by (is_gold, n_rankings, n_held) now, refilled from the queue.
- ``labeler_counts``: each labeler's ranked (current rankings) and skipped items by (is_gold, n_rankings, n_held),
  filled from the rankings and skips already stored.

The models are in ``labeling_ui.db``.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("assignments", sa.Column("counted", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.execute("UPDATE assignments SET counted = TRUE")
    op.create_index("ix_assignments_counted", "assignments", ["counted", "assigned_at"], unique=False)
    op.add_column("item_queue", sa.Column("n_held", sa.Integer(), server_default=sa.text("0"), nullable=False))
    op.execute(
        "UPDATE item_queue SET n_held = (SELECT count(*) FROM assignments WHERE assignments.item_id = item_queue.item_id)"
    )

    op.drop_table("item_queue_counts")
    op.create_table(
        "item_queue_counts",
        sa.Column("is_gold", sa.Boolean(), nullable=False),
        sa.Column("n_rankings", sa.Integer(), nullable=False),
        sa.Column("n_held", sa.Integer(), nullable=False),
        sa.Column("items", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("is_gold", "n_rankings", "n_held", name=op.f("pk_item_queue_counts")),
    )
    op.execute(
        "INSERT INTO item_queue_counts (is_gold, n_rankings, n_held, items) "
        "SELECT is_gold, n_rankings, n_held, count(*) FROM item_queue GROUP BY is_gold, n_rankings, n_held"
    )

    op.create_table(
        "labeler_counts",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("is_gold", sa.Boolean(), nullable=False),
        sa.Column("n_rankings", sa.Integer(), nullable=False),
        sa.Column("n_held", sa.Integer(), nullable=False),
        sa.Column("ranked", sa.Boolean(), nullable=False),
        sa.Column("items", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_labeler_counts_user_id_users")),
        sa.PrimaryKeyConstraint(
            "user_id", "is_gold", "n_rankings", "n_held", "ranked", name=op.f("pk_labeler_counts")
        ),
    )
    op.execute(
        "INSERT INTO labeler_counts (user_id, is_gold, n_rankings, n_held, ranked, items) "
        "SELECT done.user_id, q.is_gold, q.n_rankings, q.n_held, done.ranked, count(*) FROM ("
        "SELECT item_id, user_id, TRUE AS ranked FROM rankings WHERE is_current "
        "UNION ALL SELECT item_id, user_id, FALSE AS ranked FROM skips"
        ") AS done JOIN item_queue q ON q.item_id = done.item_id "
        "GROUP BY done.user_id, q.is_gold, q.n_rankings, q.n_held, done.ranked"
    )


def downgrade() -> None:
    op.drop_table("labeler_counts")
    op.drop_table("item_queue_counts")
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
    with op.batch_alter_table("item_queue") as batch:
        batch.drop_column("n_held")
    op.drop_index("ix_assignments_counted", table_name="assignments")
    with op.batch_alter_table("assignments") as batch:
        batch.drop_column("counted")
