"""Alembic revisions for core.models."""
