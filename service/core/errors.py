"""Domain errors that carry their own HTTP status; one handler in app.py renders them all."""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every error the service reports to a client."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ServiceError):
    """The request is well-formed JSON but its values are not what the model takes."""

    status_code = 422
    code = "invalid_input"


class MalformedRequest(ServiceError):
    """The body is not parseable (bad JSON, wrong content type)."""

    status_code = 400
    code = "malformed_request"


class LimitExceeded(ServiceError):
    """The request asks for more work than the configured limits allow."""

    status_code = 413
    code = "limit_exceeded"


class Unauthorized(ServiceError):
    """A missing or wrong API key."""

    status_code = 401
    code = "unauthorized"


class Timeout(ServiceError):
    """The request ran longer than VAE_REQUEST_TIMEOUT_S; the server carries on."""

    status_code = 503
    code = "timeout"


class NotAcceptable(ServiceError):
    """The client asked for a representation this model cannot give (a PNG of non-image rows)."""

    status_code = 406
    code = "not_acceptable"


class ModelNotReady(ServiceError):
    """The model has not finished loading and warming up."""

    status_code = 503
    code = "model_not_ready"


class ArtifactError(Exception):
    """A model directory that cannot be served: missing, incomplete or corrupt.

    Its message is one line naming the directory or file and the problem, fit to stop start-up with.
    """


class UnsupportedMediaType(ServiceError):
    """A body in a Content-Type the route does not take (text/plain is not read as JSON: no CSRF without preflight)."""

    status_code = 415
    code = "unsupported_media_type"
