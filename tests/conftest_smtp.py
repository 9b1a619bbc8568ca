"""Loopback SMTP fixtures as a plugin: ``pytest_plugins = ("tests.conftest_smtp",)``.

The fixtures live in :mod:`tests.smtp_server` next to the server they drive; this module only
re-exports them, so a test module can load them without importing each fixture by name.
"""

from tests.smtp_server import smtp_server, smtp_server_factory, tls_files

__all__ = ["smtp_server", "smtp_server_factory", "tls_files"]
