"""wasmhost: serve wasi:http/proxy 0.2 WebAssembly components from Python, reusing instances."""
__version__ = "0.1.0"
