"""Faithful emulators of the upstream APIs, served over real HTTP on 127.0.0.1 in tests."""
