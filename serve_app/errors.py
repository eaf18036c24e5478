"""Errors that cross the handle boundary from a model replica to the router. Each carries an
HTTP status and a message fit for the client."""
from __future__ import annotations


class ServingError(Exception):
    status_code = 500

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __reduce__(self):  # survive Ray's serialization with the message intact
        return (type(self), (self.message,))


class BadRequest(ServingError):
    status_code = 422


class NotFoundError(ServingError):
    status_code = 404


class ModelUnavailable(ServingError):
    """A version that cannot be pulled or loaded now (registry down, corrupt, unknown)."""

    status_code = 503
