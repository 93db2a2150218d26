"""Gateway lists at the node: every line checked, a bad file at start is one clear
error, a bad reload keeps the previous lists (node/admission.py)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from middlebox.config import NodeConfig
from middlebox.node.admission import Admission, AdmissionError, parse_ids


def write(path, text):
    path.write_text(text)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def test_parse_ids():
    assert parse_ids("a\n  b # c\n\n# d\nb\n", "f") == {"a", "b"}
    for bad, line in (("ok\ntrain é\n", 2), ("zug٣", 1), ("a/b", 1), ("x" * 65, 1)):
        with pytest.raises(AdmissionError, match=f"f:{line}: gateway id must be 1..64"):
            parse_ids(bad, "f")


@pytest.mark.parametrize(
    "content, why",
    [(b"train\xff\n", "not UTF-8"), (b"a b\n", "gateway id"), (None, "cannot read")],
)
def test_a_bad_file_at_start_is_a_clear_error(tmp_path, content, why):
    p = tmp_path / "revoked"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(AdmissionError, match=why) as e:
        Admission.from_config(NodeConfig(revoked_gateways=str(p)), 0.0)
    assert str(e.value).startswith("node.revoked_gateways") and "\n" not in str(e.value)


def test_reload_enforce_and_keep_the_last_good_lists(tmp_path):
    rev, allow = tmp_path / "rev", tmp_path / "allow"
    rev.write_text("bad-1\n")
    allow.write_text("bad-1\ngood-1\ngood-2\n")
    a = Admission(str(rev), str(allow), interval=1.0, now=0.0)
    assert a.refusal("bad-1") == "gateway 'bad-1' is revoked (node.revoked_gateways)"
    assert "not in node.allowed_gateways" in a.refusal("stranger")
    assert a.refusal("good-1") is None and a.counters["gateways_refused"] == 2

    ended = []
    sessions = {g: SimpleNamespace(gateway_id=g) for g in ("good-1", "good-2")}
    gateways = SimpleNamespace(sessions=sessions, end_session=lambda s, r, now: ended.append(s))
    write(rev, "bad-1\ngood-2\n")
    a.enforce(0.5, gateways)  # not due yet
    assert ended == []
    a.enforce(1.0, gateways)
    assert [s.gateway_id for s in ended] == ["good-2"] and a.counters["sessions_revoked"] == 1
    a.enforce(2.0, gateways)  # unchanged files: nothing again
    assert len(ended) == 1 and a.counters["list_reloads"] == 1
    write(rev, "bad-1\ngood 1\n")  # a typo: the previous lists stay
    os.unlink(allow)  # and a vanished allow-list never opens the node
    a.enforce(3.0, gateways)
    assert a.counters["list_reload_errors"] == 2 and len(ended) == 1
    assert a.refusal("good-2") is not None and a.refusal("stranger") is not None
    st = a.status()
    assert st["revoked_gateways"] == {"file": str(rev), "ids": 2} and st["last_error"]


def test_without_lists_everyone_with_a_certificate_is_admitted():
    a = Admission.from_config(NodeConfig(), 0.0)
    assert a.refusal("anyone") is None
    a.enforce(10.0, SimpleNamespace(sessions={}, end_session=None))
    assert a.status()["list_reloads"] == 0
