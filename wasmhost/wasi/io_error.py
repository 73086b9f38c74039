"""wasi:io/error: the opaque error resource carried by ``stream-error.last-operation-failed``."""
from __future__ import annotations

from .ctx import WasiCtx
from .interface import Case, HostInterface, HostResource

error_interface = HostInterface("wasi:io/error")


@error_interface.resource("error")
class IoError(HostResource):
    __slots__ = ("message", "http_error_code")

    def __init__(self, message: str, http_error_code: Case | None = None) -> None:
        self.message = message
        # wasi:http/types.http-error-code can recover an error-code from this.
        self.http_error_code = http_error_code

    def __repr__(self) -> str:
        return f"IoError({self.message!r})"


@error_interface.func("[method]error.to-debug-string")
def error_to_debug_string(ctx: WasiCtx, self: IoError) -> str:
    return self.message


def stream_failed(message: str, http_error_code: Case | None = None) -> Case:
    """A ``stream-error.last-operation-failed`` value."""
    return Case("last-operation-failed", IoError(message, http_error_code))


STREAM_CLOSED = Case("closed")
