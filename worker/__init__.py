"""Celery workers over Redis and batch tagging of project databases and files (issue 4)."""
