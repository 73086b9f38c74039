"""wasi:filesystem/types and wasi:filesystem/preopens for served guests.

A served guest gets no preopened directories, and every descriptor comes from
a preopen (``open-at``, ``read-directory`` all start from one), so no
``descriptor`` or ``directory-entry-stream`` can ever exist in a store. The
interfaces are still complete: guests built for ``wasi:cli/imports`` import
them even when they never touch a file. A method that is reached anyway
answers ``bad-descriptor`` where its result type has an error case and traps
where it has none.
"""
from __future__ import annotations

from typing import NoReturn

from .ctx import WasiCtx
from .interface import Err, HostInterface, HostResource, Trap
from .io_error import IoError

types = HostInterface("wasi:filesystem/types")
preopens = HostInterface("wasi:filesystem/preopens")


@types.resource("descriptor")
class Descriptor(HostResource):
    """A file or directory handle; never created, since nothing is preopened."""

    __slots__ = ()


@types.resource("directory-entry-stream")
class DirectoryEntryStream(HostResource):
    """A directory listing; never created (``read-directory`` needs a descriptor)."""

    __slots__ = ()


# Every descriptor method whose result type is `result<..., error-code>`.
DESCRIPTOR_RESULT_METHODS = (
    "read-via-stream",
    "write-via-stream",
    "append-via-stream",
    "advise",
    "sync-data",
    "get-flags",
    "get-type",
    "set-size",
    "set-times",
    "read",
    "write",
    "read-directory",
    "sync",
    "create-directory-at",
    "stat",
    "stat-at",
    "set-times-at",
    "link-at",
    "open-at",
    "readlink-at",
    "remove-directory-at",
    "rename-at",
    "symlink-at",
    "unlink-file-at",
    "metadata-hash",
    "metadata-hash-at",
)


def _register_bad_descriptor(wit_name: str) -> None:
    def method(ctx: WasiCtx, self: HostResource, *args: object) -> NoReturn:
        raise Err("bad-descriptor")

    method.__name__ = method.__qualname__ = wit_name.split("]", 1)[1].replace(".", "_").replace("-", "_")
    types.func(wit_name)(method)


for _method in DESCRIPTOR_RESULT_METHODS:
    _register_bad_descriptor(f"[method]descriptor.{_method}")
_register_bad_descriptor("[method]directory-entry-stream.read-directory-entry")
del _method


@types.func("[method]descriptor.is-same-object")
def descriptor_is_same_object(ctx: WasiCtx, self: Descriptor, other: Descriptor) -> bool:
    # Returns a plain bool, so there is no error to report for a descriptor this host never made.
    raise Trap("descriptor.is-same-object: this host has no filesystem descriptors")


@types.func("filesystem-error-code")
def filesystem_error_code(ctx: WasiCtx, err: IoError) -> str | None:
    # Stream errors come from HTTP bodies and stdio only, never from a file.
    return None


@preopens.func("get-directories")
def get_directories(ctx: WasiCtx) -> list[tuple[Descriptor, str]]:
    return []


INTERFACES = (types, preopens)
