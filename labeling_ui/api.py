"""The labeling stage for other packages (the pipeline's conductor, benchmarks): where a run's labels are, the
stage's config through the loader the app uses, and how far the labeling is.

Imports neither torch nor gradio (nor numpy): SQLAlchemy and PyYAML only. Nothing here starts the app; the commands
are in the README.
"""

from __future__ import annotations

from labeling_ui.config import DEFAULT_CONFIG, LabelingConfig, load_config
from labeling_ui.db import default_db_url
from labeling_ui.storage import LabelStore, Progress

__all__ = ["DEFAULT_CONFIG", "LabelingConfig", "Progress", "default_db_url", "labeling_progress", "load_config"]


def labeling_progress(db_url: str) -> Progress:
    """Regular (non-gold) items in the database at ``db_url`` and their current rankings; migrates it first."""
    store = LabelStore(db_url)
    try:
        return store.labeling_progress()
    finally:
        store.close()
