"""Upstream providers, one module each, behind one interface (``base.Provider``).

Importing this package imports no provider: ``registry.build_providers`` builds the enabled ones.
"""
