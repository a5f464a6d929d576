"""The precompute CLI: ``python -m precompute --help``."""
