"""benchmarks/instructions.py: its arguments are checked, and a connection the
server closes mid-count stops the count with a clear message (no endless read);
an answer's body is read apart from what follows it."""
from __future__ import annotations

import socket

import pytest

from benchmarks.instructions import main, read_answer, read_answer_body


def test_an_unknown_count_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        main(["--only", "sim,placement"])
    assert refused.value.code == 2
    assert "unknown placement" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        main(["--only", "api", "--requests", "get,put"])
    assert refused.value.code == 2
    assert "--requests: unknown put" in capsys.readouterr().err


def test_an_answer_is_read_whole_and_a_closed_connection_stops_the_count() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 2")
        assert read_answer(ours, b"") == b"HTTP/1.1 2"
        theirs.sendall(b"00 OK\r\ncontent-length: 2\r\n\r\n{}")
        assert read_answer_body(ours, b"HTTP/1.1 2") == (b"{}", b"")
        theirs.close()
        with pytest.raises(SystemExit, match="closed a connection"):
            read_answer(ours, b"")
