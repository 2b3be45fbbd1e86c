"""The SDK tests share the session's live server: the `live_server` fixture of
tests/conftest.py (tests/live_server.py starts it)."""
