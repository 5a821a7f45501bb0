"""The labels' storage: ``LabelStore``, the one API the app, the CLI and the export use to read and write labels.

Every write is one short transaction, committed before the method returns: a label the app reported as saved is on
disk (SQLite WAL with synchronous=FULL, or a PostgreSQL commit). Submits are idempotent on the client-sent
``submission_id`` (a retried request stores nothing twice), and rankings are append-only: an edit adds a version.
A new ranking or a skip is accepted only for the labeler's item in hand, and an edit names the version it replaces,
so a stale page is refused instead of overwriting anything. What a valid ranking is lives in ``labeling_ui.rules``;
who gets which item, in ``labeling_ui.assignment``.

One module per part of the store: ``base`` (the database, its transactions, what every part shares), ``users``,
``items``, the labeler's work in ``assign`` (the item in hand: its lease, its draft, progress) and ``submit``
(rankings and skips), ``labels`` (everyone's rankings, as the export reads them) and ``admin`` (reviews, imports).
"""

from __future__ import annotations

from labeling_ui.storage.admin import Admin
from labeling_ui.storage.assign import Assigned
from labeling_ui.storage.base import ItemView
from labeling_ui.storage.items import Items
from labeling_ui.storage.labels import Labels, Progress
from labeling_ui.storage.submit import ALREADY_RANKED, NOT_IN_HAND, StaleForm, SubmitResult, Submitting
from labeling_ui.storage.users import Users

__all__ = [
    "ALREADY_RANKED",
    "NOT_IN_HAND",
    "Assigned",
    "ItemView",
    "LabelStore",
    "Progress",
    "StaleForm",
    "SubmitResult",
]


class LabelStore(Users, Items, Submitting, Labels, Admin):
    """Users, items, rankings and skips in one database (``url``); opening it migrates the schema.

    From ``config`` (a ``LabelingConfig``, checked when it was built): ``overlap``, labelers per regular item;
    ``gold_rate``, the share of a labeler's items that are gold items; ``seed``, which fixes display orders and where
    gold items fall for each labeler; ``lease_seconds``, how long an item stays held for a labeler whose page stopped
    renewing it; ``max_candidates``, the most responses an imported item may have (what the page can show).
    """
