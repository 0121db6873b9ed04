"""Persistence: the relational schema, the database handle and the Alembic migrations."""

from __future__ import annotations
