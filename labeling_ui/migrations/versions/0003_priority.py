"""Item priorities: ``items.priority`` and the queue's ``sort_key`` (minus the priority), in the assignment order.

Among items with as many rankings, the highest priority is handed out first (active selection imports each round's
candidates with the last round's ensemble disagreement as their priority). Items already stored get priority 0, so
the order of a database without priorities is unchanged: fewest rankings, then import order.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("items", sa.Column("priority", sa.Float(), server_default=sa.text("0"), nullable=False))
    op.add_column("item_queue", sa.Column("sort_key", sa.Float(), server_default=sa.text("0"), nullable=False))
    op.drop_index("ix_item_queue_next", table_name="item_queue")
    op.create_index("ix_item_queue_next", "item_queue", ["is_gold", "n_rankings", "sort_key", "seq"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_item_queue_next", table_name="item_queue")
    op.create_index("ix_item_queue_next", "item_queue", ["is_gold", "n_rankings", "seq"], unique=False)
    with op.batch_alter_table("item_queue") as batch:
        batch.drop_column("sort_key")
    with op.batch_alter_table("items") as batch:
        batch.drop_column("priority")
