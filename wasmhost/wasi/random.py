"""wasi:random/random, wasi:random/insecure and wasi:random/insecure-seed."""
from __future__ import annotations

import os

from .ctx import WasiCtx
from .interface import HostInterface, Trap

random_interface = HostInterface("wasi:random/random")
insecure = HostInterface("wasi:random/insecure")
insecure_seed_interface = HostInterface("wasi:random/insecure-seed")

# The WIT takes a u64 length and names no error, but a 32-bit guest could never
# receive more than 4 GiB, and building such a buffer would exhaust the host
# first. Longer requests trap, with the same bound wasmtime uses by default.
MAX_RANDOM_LEN = 64 << 20


def _check_len(function: str, length: int) -> None:
    if length > MAX_RANDOM_LEN:
        raise Trap(f"{function}: requested {length} bytes, more than the {MAX_RANDOM_LEN}-byte limit")


# -- wasi:random/random --------------------------------------------------------------

@random_interface.func("get-random-bytes")
def get_random_bytes(ctx: WasiCtx, length: int) -> bytes:
    _check_len("get-random-bytes", length)
    return os.urandom(length)


@random_interface.func("get-random-u64")
def get_random_u64(ctx: WasiCtx) -> int:
    return int.from_bytes(os.urandom(8), "little")


# -- wasi:random/insecure -------------------------------------------------------------

@insecure.func("get-insecure-random-bytes")
def get_insecure_random_bytes(ctx: WasiCtx, length: int) -> bytes:
    _check_len("get-insecure-random-bytes", length)
    return ctx.insecure_random.randbytes(length)


@insecure.func("get-insecure-random-u64")
def get_insecure_random_u64(ctx: WasiCtx) -> int:
    return ctx.insecure_random.getrandbits(64)


# -- wasi:random/insecure-seed --------------------------------------------------------

@insecure_seed_interface.func("insecure-seed")
def insecure_seed(ctx: WasiCtx) -> tuple[int, int]:
    # Fixed per store: the seed is meant for hash-map DoS protection set up once.
    return ctx.insecure_seed


INTERFACES = (random_interface, insecure, insecure_seed_interface)
