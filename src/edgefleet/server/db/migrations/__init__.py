"""Alembic migration scripts of the control plane's schema (run at server start)."""
