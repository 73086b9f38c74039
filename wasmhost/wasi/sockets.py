"""wasi:sockets for served guests: present, but every use of the network is refused.

A served component reaches the outside world only through
``wasi:http/outgoing-handler``, where ``allowed_outgoing`` is enforced; raw
sockets and name lookups would bypass that. The interfaces are still complete
because guests built for ``wasi:cli/imports`` import them whether or not they
use them.

Refusals answer ``access-denied``: the spec lists it among the error codes
"always possible" for every socket API, with POSIX equivalent EACCES/EPERM,
i.e. refused by policy. The per-function "typical errors" do not fit:
``not-supported`` on create means the *address family* is unsupported (a guest
may retry with the other family) and ``new-socket-limit`` suggests retrying
later. Since no socket or resolve stream can be created, their methods are
unreachable and trap if called.

``network-error-code`` is ``@unstable(feature = network-error-code)`` in
0.2.12 and is deliberately not provided.
"""
from __future__ import annotations

from typing import NoReturn

from .ctx import WasiCtx
from .interface import Err, HostInterface, HostResource, Trap

network_interface = HostInterface("wasi:sockets/network")
instance_network_interface = HostInterface("wasi:sockets/instance-network")
ip_name_lookup = HostInterface("wasi:sockets/ip-name-lookup")
tcp = HostInterface("wasi:sockets/tcp")
tcp_create_socket_interface = HostInterface("wasi:sockets/tcp-create-socket")
udp = HostInterface("wasi:sockets/udp")
udp_create_socket_interface = HostInterface("wasi:sockets/udp-create-socket")

REFUSED = "access-denied"


@network_interface.resource("network")
class Network(HostResource):
    """The capability to use the network; it grants nothing on this host."""

    __slots__ = ()


@ip_name_lookup.resource("resolve-address-stream")
class ResolveAddressStream(HostResource):
    __slots__ = ()


@tcp.resource("tcp-socket")
class TcpSocket(HostResource):
    __slots__ = ()


@udp.resource("udp-socket")
class UdpSocket(HostResource):
    __slots__ = ()


@udp.resource("incoming-datagram-stream")
class IncomingDatagramStream(HostResource):
    __slots__ = ()


@udp.resource("outgoing-datagram-stream")
class OutgoingDatagramStream(HostResource):
    __slots__ = ()


# -- refused entry points ----------------------------------------------------------

@instance_network_interface.func("instance-network")
def instance_network(ctx: WasiCtx) -> Network:
    # A fresh handle each call: ownership moves to the guest.
    return Network()


@ip_name_lookup.func("resolve-addresses")
def resolve_addresses(ctx: WasiCtx, network: Network, name: str) -> ResolveAddressStream:
    # Refused for IP literals too: the resulting address could not be used anyway.
    raise Err(REFUSED)


@tcp_create_socket_interface.func("create-tcp-socket")
def create_tcp_socket(ctx: WasiCtx, address_family: str) -> TcpSocket:
    raise Err(REFUSED)


@udp_create_socket_interface.func("create-udp-socket")
def create_udp_socket(ctx: WasiCtx, address_family: str) -> UdpSocket:
    raise Err(REFUSED)


# -- methods of resources that are never created -----------------------------------

RESOURCE_METHODS: tuple[tuple[HostInterface, str, tuple[str, ...]], ...] = (
    (ip_name_lookup, "resolve-address-stream", ("resolve-next-address", "subscribe")),
    (tcp, "tcp-socket", (
        "start-bind",
        "finish-bind",
        "start-connect",
        "finish-connect",
        "start-listen",
        "finish-listen",
        "accept",
        "local-address",
        "remote-address",
        "is-listening",
        "address-family",
        "set-listen-backlog-size",
        "keep-alive-enabled",
        "set-keep-alive-enabled",
        "keep-alive-idle-time",
        "set-keep-alive-idle-time",
        "keep-alive-interval",
        "set-keep-alive-interval",
        "keep-alive-count",
        "set-keep-alive-count",
        "hop-limit",
        "set-hop-limit",
        "receive-buffer-size",
        "set-receive-buffer-size",
        "send-buffer-size",
        "set-send-buffer-size",
        "subscribe",
        "shutdown",
    )),
    (udp, "udp-socket", (
        "start-bind",
        "finish-bind",
        "stream",
        "local-address",
        "remote-address",
        "address-family",
        "unicast-hop-limit",
        "set-unicast-hop-limit",
        "receive-buffer-size",
        "set-receive-buffer-size",
        "send-buffer-size",
        "set-send-buffer-size",
        "subscribe",
    )),
    (udp, "incoming-datagram-stream", ("receive", "subscribe")),
    (udp, "outgoing-datagram-stream", ("check-send", "send", "subscribe")),
)


def _register_unreachable(iface: HostInterface, wit_name: str) -> None:
    # The binder prefixes the trap message with the interface and function name.
    def method(ctx: WasiCtx, self: HostResource, *args: object) -> NoReturn:
        raise Trap("this host never creates sockets or resolve streams, so none can be used")

    method.__name__ = method.__qualname__ = wit_name.split("]", 1)[1].replace(".", "_").replace("-", "_")
    iface.func(wit_name)(method)


for _iface, _resource, _methods in RESOURCE_METHODS:
    for _method in _methods:
        _register_unreachable(_iface, f"[method]{_resource}.{_method}")
del _iface, _resource, _methods, _method


INTERFACES = (
    network_interface,
    instance_network_interface,
    ip_name_lookup,
    tcp,
    tcp_create_socket_interface,
    udp,
    udp_create_socket_interface,
)
