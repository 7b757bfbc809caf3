"""Code shared by the API and the worker: settings, schemas, errors, storage, job store, upload checks.

Nothing here imports torch or the engine.
"""
