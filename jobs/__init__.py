"""Thin entrypoints: each module has ``main(argv) -> int`` and runs as ``python -m jobs.<name>``."""
