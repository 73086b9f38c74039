"""``wasi:http/types.error-code`` values and the exception that carries one.

Error codes are :class:`Case` values of the WIT ``error-code`` variant; the
cases with record payloads take dicts keyed by the WIT field names.

A :class:`HttpCodeError` is what wasi:http fails a body :class:`Pipe` with:
``io_streams.failure_case`` copies its ``http_error_code`` into the
``io-error`` the guest receives, so ``http-error-code`` can recover it.
"""
from __future__ import annotations

from .interface import Case, HostInterface
from .pipe import PipeFailed

INTERFACES: tuple[HostInterface, ...] = ()


class HttpCodeError(Exception):
    """An error with a wasi:http ``error-code`` attached (``http_error_code``)."""

    def __init__(self, code: Case, message: str | None = None) -> None:
        super().__init__(message or code.tag)
        self.http_error_code = code


def dns_error(rcode: str | None = None, info_code: int | None = None) -> Case:
    return Case("DNS-error", {"rcode": rcode, "info-code": info_code})


def internal_error(message: str | None = None) -> Case:
    return Case("internal-error", message)


def body_size_error(is_request: bool, size: int | None) -> Case:
    """The body-size case for a request or a response body (payload: bytes seen)."""
    return Case("HTTP-request-body-size" if is_request else "HTTP-response-body-size", size)


def error_code_of(error: BaseException | None, default: Case) -> Case:
    """The error-code behind ``error`` (looking through ``PipeFailed``), else ``default``."""
    while isinstance(error, PipeFailed) and error.args and isinstance(error.args[0], BaseException):
        error = error.args[0]
    code = getattr(error, "http_error_code", None)
    if isinstance(code, Case):
        return code
    if isinstance(error, ConnectionError):
        # The peer (client or server) went away mid-body.
        return Case("connection-terminated")
    return default
