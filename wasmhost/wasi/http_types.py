"""wasi:http/types: requests, responses, request-options and response-outparam.

The complete ``wasi:http/types`` interface is :data:`types_interface`; this
module imports the modules that register the rest of it (fields, bodies,
incoming responses), so importing it is enough, and it alone lists the
interface in ``INTERFACES``.

Validation follows ``wasmtime serve``: ``set-method`` accepts token methods,
``set-scheme`` RFC 3986 schemes, ``set-authority`` a URI authority whose
port (if any) is a number up to 65535 (IPv6 literals in brackets),
``set-path-with-query`` visible ASCII; ``set-status-code``
accepts 100..=999 (what the ``http`` crate accepts). A message's headers
become immutable when the message is built, and ``body`` fails when the
declared content-length is not a plain decimal number.

``response-outparam.send-informational`` is ``@unstable`` in 0.2.12 and not
part of the stable interface, so it is not provided (like wasmtime, which
only links it behind a feature).
"""
from __future__ import annotations

import re
from typing import Callable, Iterable, Union

from . import http_body, http_fields, http_response
from .ctx import WasiCtx
from .http_body import IncomingBody, consume_body, OutgoingBody, OutgoingBodyChannel
from .http_fields import Fields
from .http_interface import types_interface
from .interface import Case, Err, HostInterface, HostResource, Ok
from .io_error import IoError

# The modules above register into types_interface on import.
_REGISTERING_MODULES = (http_fields, http_body, http_response)

INTERFACES: tuple[HostInterface, ...] = (types_interface,)

_STANDARD_METHODS: dict[str, str] = {
    "GET": "get", "HEAD": "head", "POST": "post", "PUT": "put", "DELETE": "delete",
    "CONNECT": "connect", "OPTIONS": "options", "TRACE": "trace", "PATCH": "patch",
}
_METHOD_NAMES: dict[str, str] = {case: name for name, case in _STANDARD_METHODS.items()}
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]{0,63}")
# Visible ASCII; like the `http` crate, "" (= "/") and a "#fragment" (dropped when sent) are accepted.
_PATH_WITH_QUERY = re.compile(r"[\x21-\x7e]*")
_REG_NAME = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})+")
_IPV6 = re.compile(r"\[[0-9A-Fa-f:.]+\]|\[v[0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+,;=:]+\]")
_USERINFO = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:]|%[0-9A-Fa-f]{2})*")

MethodValue = Union[Case, str]


# -- method / scheme / authority ----------------------------------------------------

def method_case(method: str) -> Case:
    """An HTTP method (case-sensitive, as on the wire) as the WIT ``method`` variant."""
    case = _STANDARD_METHODS.get(method)
    return Case(case) if case is not None else Case("other", method)


def method_name(method: MethodValue) -> str:
    """The wire name of a WIT ``method``; ValueError if ``other`` is not a token."""
    tag, payload = (method, None) if isinstance(method, str) else method
    if tag == "other":
        if not isinstance(payload, str) or _TOKEN.fullmatch(payload) is None:
            raise ValueError(f"invalid method {payload!r}")
        return payload
    try:
        return _METHOD_NAMES[tag]
    except KeyError:
        raise ValueError(f"unknown method case {tag!r}") from None


def scheme_case(scheme: str) -> Case:
    lower = scheme.lower()
    if lower == "http":
        return Case("HTTP")
    if lower == "https":
        return Case("HTTPS")
    return Case("other", scheme)


def scheme_name(scheme: MethodValue) -> str:
    """``http``, ``https`` or the ``other`` scheme; ValueError when not a valid scheme."""
    tag, payload = (scheme, None) if isinstance(scheme, str) else scheme
    if tag == "HTTP":
        return "http"
    if tag == "HTTPS":
        return "https"
    if tag == "other" and isinstance(payload, str) and _SCHEME.fullmatch(payload):
        return payload.lower()
    raise ValueError(f"invalid scheme {scheme!r}")


def parse_authority(authority: str) -> tuple[str, int | None]:
    """``[userinfo@]host[:port]`` -> (host, port); ValueError when malformed.

    An IPv6 host keeps its brackets. As in wasmtime, a port section that is
    empty, not a number or above 65535 is rejected.
    """
    hostport = authority.rpartition("@")[2]
    if "@" in authority and _USERINFO.fullmatch(authority.rpartition("@")[0]) is None:
        raise ValueError(f"invalid authority {authority!r}")
    if hostport.startswith("["):
        end = hostport.find("]")
        host, rest = hostport[: end + 1], hostport[end + 1:]
        if end < 0 or _IPV6.fullmatch(host) is None:
            raise ValueError(f"invalid IPv6 host in {authority!r}")
    else:
        host, colon, port_text = hostport.partition(":")
        rest = colon + port_text
        if _REG_NAME.fullmatch(host) is None:
            raise ValueError(f"invalid host in {authority!r}")
    if not rest:
        return host, None
    if not rest.startswith(":") or not rest[1:].isdigit() or not rest[1:].isascii():
        raise ValueError(f"invalid port in {authority!r}")
    port = int(rest[1:])
    if port > 65535:
        raise ValueError(f"port out of range in {authority!r}")
    return host, port


def valid_path_with_query(value: str) -> bool:
    return _PATH_WITH_QUERY.fullmatch(value) is not None


# -- request-options -------------------------------------------------------------------

@types_interface.resource("request-options")
class RequestOptions(HostResource):
    """Transport timeouts in nanoseconds (None: the host default)."""

    __slots__ = ("connect_timeout", "first_byte_timeout", "between_bytes_timeout")

    def __init__(self) -> None:
        self.connect_timeout: int | None = None
        self.first_byte_timeout: int | None = None
        self.between_bytes_timeout: int | None = None


@types_interface.func("[constructor]request-options")
def request_options_new(ctx: WasiCtx) -> RequestOptions:
    return RequestOptions()


@types_interface.func("[method]request-options.connect-timeout")
def request_options_connect_timeout(ctx: WasiCtx, self: RequestOptions) -> int | None:
    return self.connect_timeout


@types_interface.func("[method]request-options.set-connect-timeout")
def request_options_set_connect_timeout(ctx: WasiCtx, self: RequestOptions, duration: int | None) -> None:
    self.connect_timeout = duration


@types_interface.func("[method]request-options.first-byte-timeout")
def request_options_first_byte_timeout(ctx: WasiCtx, self: RequestOptions) -> int | None:
    return self.first_byte_timeout


@types_interface.func("[method]request-options.set-first-byte-timeout")
def request_options_set_first_byte_timeout(ctx: WasiCtx, self: RequestOptions, duration: int | None) -> None:
    self.first_byte_timeout = duration


@types_interface.func("[method]request-options.between-bytes-timeout")
def request_options_between_bytes_timeout(ctx: WasiCtx, self: RequestOptions) -> int | None:
    return self.between_bytes_timeout


@types_interface.func("[method]request-options.set-between-bytes-timeout")
def request_options_set_between_bytes_timeout(ctx: WasiCtx, self: RequestOptions, duration: int | None) -> None:
    self.between_bytes_timeout = duration


# -- incoming-request ------------------------------------------------------------------

@types_interface.resource("incoming-request")
class IncomingRequest(HostResource):
    __slots__ = ("method", "scheme", "authority", "path_with_query", "_headers", "_received_headers", "body")

    def __init__(
        self, method: Case, scheme: Case | None, authority: str | None,
        path_with_query: str | None, headers: Iterable[tuple[str | bytes, bytes]], body: IncomingBody,
    ) -> None:
        """``headers`` as received (see ``Fields.received``); converted when the guest first asks."""
        self.method = method
        self.scheme = scheme
        self.authority = authority
        self.path_with_query = path_with_query
        self._headers: Fields | None = None
        self._received_headers = headers
        self.body: IncomingBody | None = body

    @property
    def headers(self) -> Fields:
        # Lazily: many guests never read the request headers.
        headers = self._headers
        if headers is None:
            headers = self._headers = Fields.received(self._received_headers)
            self._received_headers = ()
        return headers

    def on_drop(self) -> None:
        # Never consumed: nobody will read the body, let the server stop feeding it.
        body, self.body = self.body, None
        if body is not None:
            body.abandon()


@types_interface.func("[method]incoming-request.method")
def incoming_request_method(ctx: WasiCtx, self: IncomingRequest) -> Case:
    return self.method


@types_interface.func("[method]incoming-request.path-with-query")
def incoming_request_path_with_query(ctx: WasiCtx, self: IncomingRequest) -> str | None:
    return self.path_with_query


@types_interface.func("[method]incoming-request.scheme")
def incoming_request_scheme(ctx: WasiCtx, self: IncomingRequest) -> Case | None:
    return self.scheme


@types_interface.func("[method]incoming-request.authority")
def incoming_request_authority(ctx: WasiCtx, self: IncomingRequest) -> str | None:
    return self.authority


@types_interface.func("[method]incoming-request.headers")
def incoming_request_headers(ctx: WasiCtx, self: IncomingRequest) -> Fields:
    return self.headers.view()


@types_interface.func("[method]incoming-request.consume")
def incoming_request_consume(ctx: WasiCtx, self: IncomingRequest) -> IncomingBody:
    return consume_body(self)


# -- outgoing-request ------------------------------------------------------------------

@types_interface.resource("outgoing-request")
class OutgoingRequest(HostResource):
    __slots__ = ("method", "scheme", "authority", "path_with_query", "headers", "body")

    def __init__(self, headers: Fields) -> None:
        headers.freeze()
        self.method: Case = Case("get")
        self.scheme: Case | None = None
        self.authority: str | None = None
        self.path_with_query: str | None = None
        self.headers = headers
        # The consumer side of the body once the guest asked for it.
        self.body: OutgoingBodyChannel | None = None


def _new_body(ctx: WasiCtx, headers: Fields, is_request: bool) -> OutgoingBody:
    try:
        return OutgoingBody.for_message(ctx, headers, is_request)
    except ValueError:
        raise Err(None) from None  # invalid content-length, as wasmtime refuses it


@types_interface.func("[constructor]outgoing-request")
def outgoing_request_new(ctx: WasiCtx, headers: Fields) -> OutgoingRequest:
    return OutgoingRequest(headers)


@types_interface.func("[method]outgoing-request.body")
def outgoing_request_body(ctx: WasiCtx, self: OutgoingRequest) -> OutgoingBody:
    if self.body is not None:
        raise Err(None)
    body = _new_body(ctx, self.headers, True)
    self.body = body.channel
    return body


@types_interface.func("[method]outgoing-request.method")
def outgoing_request_method(ctx: WasiCtx, self: OutgoingRequest) -> Case:
    return self.method


@types_interface.func("[method]outgoing-request.set-method")
def outgoing_request_set_method(ctx: WasiCtx, self: OutgoingRequest, method: MethodValue) -> None:
    try:
        method_name(method)
    except ValueError:
        raise Err(None) from None
    self.method = Case(method) if isinstance(method, str) else method


@types_interface.func("[method]outgoing-request.path-with-query")
def outgoing_request_path_with_query(ctx: WasiCtx, self: OutgoingRequest) -> str | None:
    return self.path_with_query


@types_interface.func("[method]outgoing-request.set-path-with-query")
def outgoing_request_set_path_with_query(ctx: WasiCtx, self: OutgoingRequest, path_with_query: str | None) -> None:
    if path_with_query is not None and not valid_path_with_query(path_with_query):
        raise Err(None)
    self.path_with_query = path_with_query


@types_interface.func("[method]outgoing-request.scheme")
def outgoing_request_scheme(ctx: WasiCtx, self: OutgoingRequest) -> Case | None:
    return self.scheme


@types_interface.func("[method]outgoing-request.set-scheme")
def outgoing_request_set_scheme(ctx: WasiCtx, self: OutgoingRequest, scheme: MethodValue | None) -> None:
    if scheme is not None:
        try:
            scheme_name(scheme)
        except ValueError:
            raise Err(None) from None
        scheme = Case(scheme) if isinstance(scheme, str) else scheme
    self.scheme = scheme


@types_interface.func("[method]outgoing-request.authority")
def outgoing_request_authority(ctx: WasiCtx, self: OutgoingRequest) -> str | None:
    return self.authority


@types_interface.func("[method]outgoing-request.set-authority")
def outgoing_request_set_authority(ctx: WasiCtx, self: OutgoingRequest, authority: str | None) -> None:
    if authority is not None:
        try:
            parse_authority(authority)
        except ValueError:
            raise Err(None) from None
    self.authority = authority


@types_interface.func("[method]outgoing-request.headers")
def outgoing_request_headers(ctx: WasiCtx, self: OutgoingRequest) -> Fields:
    return self.headers.view()


# -- outgoing-response -----------------------------------------------------------------

@types_interface.resource("outgoing-response")
class OutgoingResponse(HostResource):
    __slots__ = ("status", "headers", "body")

    def __init__(self, headers: Fields) -> None:
        headers.freeze()
        self.status = 200
        self.headers = headers
        self.body: OutgoingBodyChannel | None = None


@types_interface.func("[constructor]outgoing-response")
def outgoing_response_new(ctx: WasiCtx, headers: Fields) -> OutgoingResponse:
    return OutgoingResponse(headers)


@types_interface.func("[method]outgoing-response.status-code")
def outgoing_response_status_code(ctx: WasiCtx, self: OutgoingResponse) -> int:
    return self.status


@types_interface.func("[method]outgoing-response.set-status-code")
def outgoing_response_set_status_code(ctx: WasiCtx, self: OutgoingResponse, status_code: int) -> None:
    if not 100 <= status_code <= 999:
        raise Err(None)
    self.status = status_code


@types_interface.func("[method]outgoing-response.headers")
def outgoing_response_headers(ctx: WasiCtx, self: OutgoingResponse) -> Fields:
    return self.headers.view()


@types_interface.func("[method]outgoing-response.body")
def outgoing_response_body(ctx: WasiCtx, self: OutgoingResponse) -> OutgoingBody:
    if self.body is not None:
        raise Err(None)
    body = _new_body(ctx, self.headers, False)
    self.body = body.channel
    return body


# -- response-outparam -----------------------------------------------------------------

@types_interface.resource("response-outparam")
class ResponseOutparam(HostResource):
    """Hands the guest's answer (an OutgoingResponse or an error-code Case) to ``deliver``."""

    __slots__ = ("deliver",)

    def __init__(self, deliver: Callable[[Union[OutgoingResponse, Case]], None]) -> None:
        self.deliver = deliver


@types_interface.func("[static]response-outparam.set")
def response_outparam_set(ctx: WasiCtx, param: ResponseOutparam, response: Ok | Err) -> None:
    # `param` is owned now, so set can happen only once per outparam.
    param.deliver(response.value)


# -- http-error-code -------------------------------------------------------------------

@types_interface.func("http-error-code")
def http_error_code(ctx: WasiCtx, err: IoError) -> Case | None:
    return err.http_error_code
