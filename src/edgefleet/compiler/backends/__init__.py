"""Compiler back-ends, one module per engine, whose builders the runtime registry names (runtimes/base.py).

No engine's module imports another's (an import-linter contract)."""
