#!/usr/bin/env python3
"""Fetch the standard WASI 0.2 WIT packages into ``wit/deps/``.

The WIT is taken verbatim from the ``@bytecodealliance/jco`` npm package
(which ships the upstream WASI WIT under ``lib/wit/builtin/<version>/``), so
the standard interfaces are never retyped by hand.

    python scripts/fetch_wit.py            # uses `npm pack`, pinned version
    python scripts/fetch_wit.py --check    # only verify wit/deps is up to date

Layout produced (accepted by componentize-py / wit-parser as dependencies):

    wit/deps/cli/package.wit         (wasi:cli@0.2.12)
    wit/deps/clocks/package.wit      (wasi:clocks@0.2.12)
    wit/deps/filesystem/package.wit  ...
    wit/deps/http/package.wit
    wit/deps/io/package.wit
    wit/deps/random/package.wit
    wit/deps/sockets/package.wit
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

JCO_PACKAGE = "@bytecodealliance/jco"
JCO_VERSION = "1.35.0"
# npm's integrity string for the tarball above (sha512, as `npm pack --json` reports it).
JCO_INTEGRITY = (
    "sha512-O53cWIMm/M1SpwLxKRicvAMDnzWf4zWs6I6qFZIGbn3HUovDMCCe9blkGxxYuyocHjVf/cXgNmlMu/x7Tyi77A=="
)
WASI_VERSION = "0.2.12"
PACKAGES = ("cli", "clocks", "filesystem", "http", "io", "random", "sockets")

ROOT = Path(__file__).resolve().parent.parent
DEPS = ROOT / "wit" / "deps"


def _npm_pack(dest: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        sys.exit("fetch_wit: `npm` not found on PATH")
    out = subprocess.run(
        [npm, "pack", f"{JCO_PACKAGE}@{JCO_VERSION}", "--json", "--pack-destination", str(dest)],
        check=True,
        capture_output=True,
        text=True,
        cwd=dest,
    ).stdout
    info = json.loads(out)[0]
    return dest / info["filename"]


def _check_integrity(data: bytes) -> None:
    algo, _, expected = JCO_INTEGRITY.partition("-")
    digest = base64.b64encode(hashlib.new(algo, data).digest()).decode()
    if digest != expected:
        sys.exit(f"fetch_wit: integrity mismatch for {JCO_PACKAGE}@{JCO_VERSION}: {algo}-{digest}")


def _extract(tarball: Path) -> dict[str, bytes]:
    """Return {name: package.wit contents} for every wasi-* package in the tarball."""
    data = tarball.read_bytes()
    _check_integrity(data)
    prefix = f"package/lib/wit/builtin/{WASI_VERSION}/wasi-"
    found: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            if not member.isfile() or not member.name.startswith(prefix):
                continue
            rest = member.name[len(prefix):]  # e.g. "http/package.wit"
            name, _, filename = rest.partition("/")
            if filename != "package.wit":
                sys.exit(f"fetch_wit: unexpected file layout {member.name}")
            f = tar.extractfile(member)
            assert f is not None
            found[name] = f.read()
    missing = set(PACKAGES) - set(found)
    if missing:
        sys.exit(f"fetch_wit: missing packages in tarball: {sorted(missing)}")
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tarball", type=Path, help="use an already downloaded jco .tgz instead of `npm pack`")
    ap.add_argument("--check", action="store_true", help="verify wit/deps matches, write nothing")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="fetch-wit-") as tmp:
        tarball = args.tarball or _npm_pack(Path(tmp))
        found = _extract(tarball)

    stale = []
    for name in PACKAGES:
        target = DEPS / name / "package.wit"
        content = found[name]
        if target.exists() and target.read_bytes() == content:
            continue
        stale.append(name)
        if not args.check:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
    extra = sorted(set(found) - set(PACKAGES))
    if extra:
        print(f"fetch_wit: note: not copied (not listed in PACKAGES): {extra}")
    if args.check:
        if stale:
            print(f"fetch_wit: out of date: {stale}")
            return 1
        print("fetch_wit: wit/deps is up to date")
        return 0
    print(f"fetch_wit: {JCO_PACKAGE}@{JCO_VERSION} -> wit/deps ({WASI_VERSION}); updated: {stale or 'nothing'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
