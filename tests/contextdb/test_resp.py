import io

import pytest

from contextdb.errors import ContextDBError
from contextdb.resp import RespError, encode_command, read_reply


def parse(data: bytes):
    return read_reply(io.BytesIO(data))


def test_encode_command_as_bulk_strings():
    assert encode_command("SET", "k", b"v\r\n", 5) == (
        b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n$1\r\n5\r\n"
    )


def test_reply_types():
    assert parse(b"+OK\r\n") == "OK"
    assert parse(b":42\r\n") == 42
    assert parse(b"$5\r\nhe\r\no\r\n") == b"he\r\no"  # binary safe
    assert parse(b"$0\r\n\r\n") == b""
    assert parse(b"$-1\r\n") is None
    assert parse(b"*-1\r\n") is None
    assert parse(b"*3\r\n:1\r\n$1\r\na\r\n*1\r\n+x\r\n") == [1, b"a", ["x"]]
    err = parse(b"-WRONGTYPE bad\r\n")
    assert isinstance(err, RespError) and "WRONGTYPE" in str(err)


@pytest.mark.parametrize(
    "data", [b"", b"+OK", b"$5\r\nab", b"$3\r\nabcd\r\n", b"?x\r\n", b"*2\r\n:1\r\n"]
)
def test_truncated_or_malformed_replies_raise(data):
    with pytest.raises(ContextDBError):
        parse(data)
