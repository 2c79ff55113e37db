"""Domain errors that name the problem; the runtime maps each to a gRPC status.

Domain code raises these instead of importing grpc, so chunking, routing or
storage logic stays testable without a server, while every servicer still
answers with the standard status code a client can act on.
"""


class PlatformError(Exception):
    """Base class: the message must say what is wrong in terms the caller knows."""

    code_name = "INTERNAL"


class InvalidInputError(PlatformError):
    """The caller sent something unusable (empty file, wrong type, bad range)."""

    code_name = "INVALID_ARGUMENT"


class NotFoundError(PlatformError):
    """A named thing (document id, path) does not exist."""

    code_name = "NOT_FOUND"


class TooLargeError(PlatformError):
    """A size limit was exceeded (file bytes, batch length)."""

    code_name = "RESOURCE_EXHAUSTED"


class FailedPreconditionError(PlatformError):
    """The system is not in a state that allows the call (e.g. dimension mismatch)."""

    code_name = "FAILED_PRECONDITION"


class UnavailableError(PlatformError):
    """A dependency (service or backend, named in the message) cannot be reached."""

    code_name = "UNAVAILABLE"


class PermissionDeniedError(PlatformError):
    """The caller, or this service, may not read or change the named thing."""

    code_name = "PERMISSION_DENIED"


class UnimplementedError(PlatformError):
    """A known kind of request this deployment does not support yet (e.g. gs://)."""

    code_name = "UNIMPLEMENTED"


class RateLimitedError(PlatformError):
    """A dependency (named in the message) refused for load or quota, e.g. HTTP 429."""

    code_name = "RESOURCE_EXHAUSTED"


class DeadlineError(PlatformError):
    """A dependency (named in the message) did not answer within its deadline."""

    code_name = "DEADLINE_EXCEEDED"


class AbortedError(PlatformError):
    """The call lost a race with a change it must adapt to (named in the
    message); retrying it as it was would fail again."""

    code_name = "ABORTED"
