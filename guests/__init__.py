"""Sample wasi:http/proxy guest components for wasmhost (see guests/README.md).

Build them with ``python -m guests.build [NAMES...]``.
"""
