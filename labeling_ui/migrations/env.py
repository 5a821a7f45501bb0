"""Alembic environment. ``labeling_ui.db.migrate`` passes an open connection; the alembic command builds one."""

from __future__ import annotations

from alembic import context

from labeling_ui.db import Base, make_engine


def run_migrations(connection) -> None:
    # render_as_batch: SQLite cannot ALTER most things, so alembic rebuilds the table (copy, drop, rename).
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    run_migrations(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("db") or context.config.get_main_option("sqlalchemy.url")
    engine = make_engine(url)
    with engine.begin() as connection:
        run_migrations(connection)
    engine.dispose()
