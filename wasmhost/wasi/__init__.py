"""The WASI 0.2 interfaces wasmhost implements in Python, one module per concern."""
from __future__ import annotations

from .interface import HostInterface


def all_interfaces() -> tuple[HostInterface, ...]:
    """Every interface the host provides (imported lazily: the server needs them, tools may not)."""
    from . import (
        cli, clocks, filesystem, http_outgoing, http_types, io_error, io_poll, io_streams,
        random, sockets,
    )

    return (
        io_error.error_interface,
        io_poll.poll_interface,
        io_streams.streams_interface,
        *clocks.INTERFACES,
        *random.INTERFACES,
        *cli.INTERFACES,
        *filesystem.INTERFACES,
        *sockets.INTERFACES,
        *http_types.INTERFACES,
        *http_outgoing.INTERFACES,
    )
