"""prefsmith storage: SQLAlchemy 2.0 models, engines, Alembic migrations, idempotent writes, queries.

Imports nothing from the other prefsmith packages but `configs`.
"""
