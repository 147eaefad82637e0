"""Errors: each gRPC status code the server answers with is one exception class, carrying
the server's message; a book that cannot be repaired is a :class:`GapError`."""

from __future__ import annotations

import grpc


class RavenError(Exception):
    """Any error the server answered with. ``code`` is the gRPC status code's name."""

    code = "UNKNOWN"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class Cancelled(RavenError):
    code = "CANCELLED"


class InvalidArgument(RavenError):
    code = "INVALID_ARGUMENT"


class DeadlineExceeded(RavenError):
    code = "DEADLINE_EXCEEDED"


class NotFound(RavenError):
    code = "NOT_FOUND"


class AlreadyExists(RavenError):
    code = "ALREADY_EXISTS"


class PermissionDenied(RavenError):
    code = "PERMISSION_DENIED"


class ResourceExhausted(RavenError):
    code = "RESOURCE_EXHAUSTED"


class FailedPrecondition(RavenError):
    code = "FAILED_PRECONDITION"


class Aborted(RavenError):
    code = "ABORTED"


class OutOfRange(RavenError):
    code = "OUT_OF_RANGE"


class Unimplemented(RavenError):
    code = "UNIMPLEMENTED"


class Internal(RavenError):
    code = "INTERNAL"


class Unavailable(RavenError):
    code = "UNAVAILABLE"


class DataLoss(RavenError):
    code = "DATA_LOSS"


class Unauthenticated(RavenError):
    code = "UNAUTHENTICATED"


_BY_CODE = {
    cls.code: cls
    for cls in (
        Cancelled,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
}


def from_rpc(error: grpc.RpcError) -> RavenError:
    """The exception for a failed call."""
    code = error.code()
    name = code.name if code is not None else "UNKNOWN"
    return _BY_CODE.get(name, RavenError)(error.details() or name)


class GapError(Exception):
    """A book missed events it cannot get back from the stream: subscribe again."""
