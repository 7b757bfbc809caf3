"""stillmoving's HTTP API (FastAPI). Sends Celery tasks by name; never imports torch or the engine."""
