"""stillmoving's Celery worker: thin tasks that load a job by id, call the engine, store artifacts."""
