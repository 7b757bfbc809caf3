"""The engine's own exception types: one base class, a few subclasses with a stable `code`."""

from __future__ import annotations


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""

    code = "engine_error"

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


class SpecError(EngineError):
    """An argument is out of range or inconsistent; the message names it and its value."""

    code = "invalid_argument"


class CheckpointError(EngineError):
    """An uploaded checkpoint is not usable with the chosen base model."""

    code = "invalid_checkpoint"


class CancelledError(EngineError):
    """The caller's cancel check asked to stop; raised between steps."""

    code = "canceled"


class SuspendedError(EngineError):
    """The caller's suspend check asked to stop (its worker is shutting down); raised between steps, after a
    training has saved its resume state (when it has a state directory), so that a later run continues it."""

    code = "suspended"


class AdapterError(EngineError):
    """An adapter file (Spatial or Motion Adapter) is unreadable or does not fit the model; names the file."""

    code = "invalid_adapter"


class ModelLoadError(EngineError):
    """Base weights could not be loaded (bad id, missing files offline, incompatible Motion Adapter weights)."""

    code = "model_load_failed"
