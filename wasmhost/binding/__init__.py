"""The lean binding layer between wasmtime's component C API and Python host code."""
