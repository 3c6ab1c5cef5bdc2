"""lateline: batch late-chunking embedding pipeline (Ray Data -> LanceDB). Importing has no side effects."""

__version__ = "0.1.0"
