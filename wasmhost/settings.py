"""All server settings as one pydantic-settings model (CLI flags, WASMHOST_* env vars).

Flag names follow ``wasmtime serve`` where it has one. Durations accept
``1s``, ``500ms``, ``250us``, ``2m`` or a plain number of seconds, like
wasmtime's parser.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ns|us|µs|μs|ms|s|m|h)?\s*$")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """Seconds from ``1s``/``500ms``/``2m``/``1.5``; ``none``/``inf`` mean no limit."""
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        if value.strip().lower() in ("none", "inf", "infinite"):
            return math.inf
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(f"invalid duration {value!r}: use e.g. 1s, 500ms, 250us, 2m")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise ValueError(f"invalid duration {value!r}")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


def parse_addr(addr: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"invalid address {addr!r}: expected HOST:PORT, e.g. 0.0.0.0:8080")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    number = int(port)
    if not 0 <= number <= 65535:
        raise ValueError(f"invalid port in {addr!r}")
    return host, number


class Settings(BaseSettings):
    """What ``wasmhost serve`` is told; one model behind CLI and environment."""

    model_config = SettingsConfigDict(env_prefix="WASMHOST_", extra="forbid")

    component: Path | None = Field(
        default=None, description="The component to serve; the built-in demo when unset.")
    addr: str = Field(default="0.0.0.0:8080", description="Socket address to bind to.")
    # One Python process is bound by its GIL: N processes (each with its own
    # loop, engine, instances and SO_REUSEPORT socket) on one address use N cores.
    workers: int = Field(default=1, ge=1, description="Server processes (CLI only; create_app serves in-process).")
    # inline: wasmhost's InlineLoop, which runs guest calls on the thread driving
    # the loop (no thread hand-off per request); asyncio: the standard loop, guest
    # calls on a thread per instance (what an app embedding wasmhost gets).
    loop: Literal["inline", "asyncio"] = Field(
        default="inline", description="Event loop of the CLI's server processes (CLI only).")
    env: list[str] = Field(
        default_factory=list,
        description="NAME=VAL to pass to the guest; a bare NAME passes the host's value.")
    header: list[str] = Field(
        default_factory=list, description="`name: value` request headers to add or replace.")
    no_logging_prefix: bool = Field(default=False, description="Do not prefix guest stdout/stderr lines.")
    # Reuse is the point of wasmhost: 128 matches wasmtime's default for p3 guests
    # and keeps a componentize-py guest's instantiate cost off nearly every request.
    max_instance_reuse_count: int = Field(default=128, ge=1)
    max_instance_concurrent_reuse_count: int = Field(default=1, ge=1)
    idle_instance_timeout: Duration = Field(default=1.0)
    request_timeout: Duration = Field(
        default=math.inf, description="Longest a request may run in the guest (none by default).")
    # gunicorn's graceful timeout; wasmtime serve has none (it stops at once).
    shutdown_timeout: Duration = Field(
        default=30.0, description="On SIGTERM/SIGINT, how long requests in flight get to finish before they are cut off.")
    max_instances: int | None = Field(
        default=None, ge=1, description="Bound on live instances; requests queue beyond it.")
    max_concurrent_requests: int | None = Field(default=None, ge=1)
    # Guest code (and the Python host calls it makes) competes for the GIL:
    # letting more requests execute at once than there are cores only adds
    # contention, and starting an instance per request in flight only adds
    # cold instances. Requests blocked on I/O do not hold a slot.
    max_executing_requests: int | None = Field(
        default=None, ge=1,
        description="Requests executing guest code at once; while that many instances are busy, "
                    "requests queue for them instead of starting more (default: CPU cores).")
    allow_outgoing: list[str] = Field(
        default_factory=list, description="HOST[:PORT] the guest may send outgoing requests to.")
    profile: str | None = Field(default=None, description="guest[,PATH] or perfmap.")
    cache_dir: Path | None = Field(
        default=None, description="Compiled-component cache folder (default ~/.cache/wasmhost).")
    no_cache: bool = Field(default=False, description="Compile the component on every start.")
    max_request_body: int = Field(default=1 << 30, ge=0, description="Largest request body accepted, bytes.")

    @field_validator("addr")
    @classmethod
    def _check_addr(cls, value: str) -> str:
        parse_addr(value)
        return value

    @field_validator("env")
    @classmethod
    def _check_env(cls, values: list[str]) -> list[str]:
        for item in values:
            name = item.split("=", 1)[0]
            if not name:
                raise ValueError(f"invalid --env {item!r}: expected NAME or NAME=VALUE")
        return values

    @field_validator("header")
    @classmethod
    def _check_header(cls, values: list[str]) -> list[str]:
        for item in values:
            name, sep, _ = item.partition(":")
            if not sep or not name.strip() or any(c in name for c in " \t\r\n"):
                raise ValueError(f"invalid header {item!r}: expected `name: value`")
        return values

    @field_validator("profile")
    @classmethod
    def _check_profile(cls, value: str | None) -> str | None:
        if value is not None and value.split(",", 1)[0] not in ("guest", "perfmap"):
            raise ValueError(f"invalid --profile {value!r}: expected guest[,PATH] or perfmap")
        return value

    @field_validator("allow_outgoing")
    @classmethod
    def _check_outgoing(cls, values: list[str]) -> list[str]:
        return [v.strip().lower() for v in values if v.strip()]

    # -- derived values ---------------------------------------------------------
    def env_pairs(self, host_env: dict[str, str]) -> tuple[tuple[str, str], ...]:
        pairs = []
        for item in self.env:
            name, sep, value = item.partition("=")
            if not sep:
                if name not in host_env:
                    continue
                value = host_env[name]
            pairs.append((name, value))
        return tuple(pairs)

    def header_overrides(self) -> list[tuple[str, bytes]]:
        out = []
        for item in self.header:
            name, _, value = item.partition(":")
            out.append((name.strip().lower(), value.strip().encode("latin-1")))
        return out
