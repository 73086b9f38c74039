"""The one ``wasi:http/types`` interface object every ``http_*`` module registers into.

``wasi:http/types`` is implemented across several modules (fields, bodies,
requests and responses); they all decorate into :data:`types_interface`, and
only :mod:`wasmhost.wasi.http_types` lists it in its ``INTERFACES`` (it
imports the other modules, so the interface is complete once it is imported).
"""
from __future__ import annotations

from .interface import HostInterface

types_interface = HostInterface("wasi:http/types")

# Exposed by http_types, which imports every module registering into it.
INTERFACES: tuple[HostInterface, ...] = ()
