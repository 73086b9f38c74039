"""wasi:cli imports of a served guest: environment, exit, stdio and terminals.

A served guest sees only the environment and arguments the server was
configured with (never the host's own), an empty stdin, and stdout/stderr that
go line by line to the server's log sinks. None of its stdio is a terminal.
"""
from __future__ import annotations

from typing import NoReturn

from .ctx import GuestExit, WasiCtx
from .interface import Err, HostInterface, HostResource, Ok
from .io_streams import EmptyInputStream, InputStream, OutputStream, SinkOutputStream

environment = HostInterface("wasi:cli/environment")
exit_interface = HostInterface("wasi:cli/exit")
stdin = HostInterface("wasi:cli/stdin")
stdout = HostInterface("wasi:cli/stdout")
stderr = HostInterface("wasi:cli/stderr")
terminal_input = HostInterface("wasi:cli/terminal-input")
terminal_output = HostInterface("wasi:cli/terminal-output")
terminal_stdin = HostInterface("wasi:cli/terminal-stdin")
terminal_stdout = HostInterface("wasi:cli/terminal-stdout")
terminal_stderr = HostInterface("wasi:cli/terminal-stderr")


# -- wasi:cli/environment --------------------------------------------------------

@environment.func("get-environment")
def get_environment(ctx: WasiCtx) -> list[tuple[str, str]]:
    # Only what the user passed explicitly; the config is immutable, so every
    # call returns the same values as the spec asks.
    return list(ctx.config.env)


@environment.func("get-arguments")
def get_arguments(ctx: WasiCtx) -> list[str]:
    return list(ctx.config.args)


@environment.func("initial-cwd")
def initial_cwd(ctx: WasiCtx) -> str | None:
    # There are no preopened directories, so no path could be resolved against a cwd.
    return None


# -- wasi:cli/exit -----------------------------------------------------------------

@exit_interface.func("exit")
def exit_(ctx: WasiCtx, status: Ok | Err) -> NoReturn:
    # status is a `result` (no payloads) passed as a parameter: Ok(None) or Err(None).
    raise GuestExit(1 if isinstance(status, Err) else 0)


@exit_interface.func("exit-with-code")
def exit_with_code(ctx: WasiCtx, status_code: int) -> NoReturn:
    raise GuestExit(status_code)


# -- wasi:cli/stdin, stdout, stderr ----------------------------------------------
# Each call hands a new owned handle to the guest, so each returns a new object;
# the streams share the store's LineSink, which keeps partial lines together.

@stdin.func("get-stdin")
def get_stdin(ctx: WasiCtx) -> InputStream:
    return EmptyInputStream()


@stdout.func("get-stdout")
def get_stdout(ctx: WasiCtx) -> OutputStream:
    return SinkOutputStream(ctx.stdout)


@stderr.func("get-stderr")
def get_stderr(ctx: WasiCtx) -> OutputStream:
    return SinkOutputStream(ctx.stderr)


# -- wasi:cli/terminal-* -------------------------------------------------------------

@terminal_input.resource("terminal-input")
class TerminalInput(HostResource):
    """The input side of a terminal (no operations in 0.2; never handed out here)."""

    __slots__ = ()


@terminal_output.resource("terminal-output")
class TerminalOutput(HostResource):
    """The output side of a terminal (no operations in 0.2; never handed out here)."""

    __slots__ = ()


@terminal_stdin.func("get-terminal-stdin")
def get_terminal_stdin(ctx: WasiCtx) -> TerminalInput | None:
    return None


@terminal_stdout.func("get-terminal-stdout")
def get_terminal_stdout(ctx: WasiCtx) -> TerminalOutput | None:
    return None


@terminal_stderr.func("get-terminal-stderr")
def get_terminal_stderr(ctx: WasiCtx) -> TerminalOutput | None:
    return None


INTERFACES = (
    environment,
    exit_interface,
    stdin,
    stdout,
    stderr,
    terminal_input,
    terminal_output,
    terminal_stdin,
    terminal_stdout,
    terminal_stderr,
)
