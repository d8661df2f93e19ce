"""find_marker: the workspace id from environ bytes, and nothing else from them."""

from __future__ import annotations

import pytest

from agent.enrich.workspace import DEFAULT_MARKERS, MAX_WORKSPACE_ID, find_marker

SECRET = b"hunter2"


def env(*entries: str | bytes, terminated: bool = True) -> bytes:
    """Environ bytes as the kernel gives them: NUL-separated, normally NUL-terminated."""
    data = b"\0".join(e.encode() if isinstance(e, str) else e for e in entries)
    return data + b"\0" if terminated else data


CASES = [
    ("at start", env("WORKSPACE_ID=ws-1", "PATH=/usr/bin:/bin", "HOME=/home/dev"),
     DEFAULT_MARKERS, ("WORKSPACE_ID", "ws-1")),
    ("in the middle", env("PATH=/usr/bin", "WORKSPACE_ID=ws-1", "HOME=/home/dev"),
     DEFAULT_MARKERS, ("WORKSPACE_ID", "ws-1")),
    ("at the end", env("PATH=/usr/bin", "HOME=/home/dev", "WORKSPACE_ID=ws-1"),
     DEFAULT_MARKERS, ("WORKSPACE_ID", "ws-1")),
    ("at the end without trailing NUL (truncated read)",
     env("PATH=/usr/bin", "WORKSPACE_ID=ws-1", terminated=False), DEFAULT_MARKERS,
     ("WORKSPACE_ID", "ws-1")),
    ("only entry without trailing NUL", b"WORKSPACE_ID=ws-1", DEFAULT_MARKERS,
     ("WORKSPACE_ID", "ws-1")),
    ("value containing =", env("WORKSPACE_ID=ws=1=2"), DEFAULT_MARKERS, ("WORKSPACE_ID", "ws=1=2")),
    ("gitpod marker", env("GITPOD_WORKSPACE_ID=gp-abc"), DEFAULT_MARKERS,
     ("GITPOD_WORKSPACE_ID", "gp-abc")),
    ("custom marker", env("CODER_WORKSPACE_NAME=dev-1"), ("CODER_WORKSPACE_NAME",),
     ("CODER_WORKSPACE_NAME", "dev-1")),
    # -- config order decides, not environ order --
    ("config order: first configured marker wins",
     env("WORKSPACE_ID=plain", "NODEWARDEN_WORKSPACE_ID=nw"), DEFAULT_MARKERS,
     ("NODEWARDEN_WORKSPACE_ID", "nw")),
    ("config order reversed", env("WORKSPACE_ID=plain", "NODEWARDEN_WORKSPACE_ID=nw"),
     ("WORKSPACE_ID", "NODEWARDEN_WORKSPACE_ID"), ("WORKSPACE_ID", "plain")),
    ("duplicate entry: first one, as getenv sees it", env("WORKSPACE_ID=a", "WORKSPACE_ID=b"),
     DEFAULT_MARKERS, ("WORKSPACE_ID", "a")),
    # -- empty values do not mark --
    ("empty value ignored, next marker used",
     env("NODEWARDEN_WORKSPACE_ID=", "WORKSPACE_ID=ws-2"), DEFAULT_MARKERS,
     ("WORKSPACE_ID", "ws-2")),
    ("only an empty value", env("PATH=/bin", "WORKSPACE_ID="), DEFAULT_MARKERS, None),
    ("empty value at the end without NUL", env("WORKSPACE_ID=", terminated=False),
     DEFAULT_MARKERS, None),
    # -- names that only look like a marker --
    ("prefixed name", env("MY_WORKSPACE_ID=x"), ("WORKSPACE_ID",), None),
    ("prefixed name mid-environ", env("PATH=/bin", "MY_WORKSPACE_ID=x"), ("WORKSPACE_ID",), None),
    ("suffixed name", env("WORKSPACE_ID_OLD=y"), ("WORKSPACE_ID",), None),
    ("suffixed name mid-environ", env("PATH=/bin", "WORKSPACE_ID_OLD=y"), ("WORKSPACE_ID",), None),
    ("both lookalikes with defaults",
     env("MY_WORKSPACE_ID=x", "WORKSPACE_ID_OLD=y", "XWORKSPACE_ID=z"), DEFAULT_MARKERS, None),
    ("gitpod name is not WORKSPACE_ID", env("GITPOD_WORKSPACE_ID=gp"), ("WORKSPACE_ID",), None),
    ("nodewarden name is not WORKSPACE_ID", env("NODEWARDEN_WORKSPACE_ID=nw"), ("WORKSPACE_ID",),
     None),
    ("lowercase name", env("workspace_id=x"), DEFAULT_MARKERS, None),
    ("marker text inside another value", env("NOTE=WORKSPACE_ID=fake", "PATH=/bin"),
     DEFAULT_MARKERS, None),
    ("name without =", env("WORKSPACE_ID", "PATH=/bin"), DEFAULT_MARKERS, None),
    ("truncated inside the name", env("PATH=/bin", "WORKSPACE_I", terminated=False),
     DEFAULT_MARKERS, None),
    ("lookalike first, real one later", env("MY_WORKSPACE_ID=x", "WORKSPACE_ID=real"),
     ("WORKSPACE_ID",), ("WORKSPACE_ID", "real")),
    # -- values that are not identifiers --
    ("terminal escape", env("WORKSPACE_ID=ws\x1b[31mred"), DEFAULT_MARKERS, None),
    ("newline (log injection)", env("WORKSPACE_ID=ws\nFAKE finding"), DEFAULT_MARKERS, None),
    ("tab", env("WORKSPACE_ID=ws\t1"), DEFAULT_MARKERS, None),
    ("DEL", env("WORKSPACE_ID=ws\x7f"), DEFAULT_MARKERS, None),
    ("bell, then a good marker", env("NODEWARDEN_WORKSPACE_ID=\x07", "WORKSPACE_ID=ok"),
     DEFAULT_MARKERS, ("WORKSPACE_ID", "ok")),
    ("printable unicode is kept", env("WORKSPACE_ID=ws-é-日本"), DEFAULT_MARKERS,
     ("WORKSPACE_ID", "ws-é-日本")),
    ("invalid utf-8 is replaced, never raw", env(b"WORKSPACE_ID=ws-\xff"), DEFAULT_MARKERS,
     ("WORKSPACE_ID", "ws-\ufffd")),
    # -- nothing to find --
    ("empty environ", b"", DEFAULT_MARKERS, None),
    ("no markers configured", env("WORKSPACE_ID=ws-1"), (), None),
    ("single NUL", b"\0", DEFAULT_MARKERS, None),
]


@pytest.mark.parametrize(("environ", "markers", "want"),
                         [pytest.param(e, m, w, id=n) for n, e, m, w in CASES])
def test_find_marker(environ, markers, want):
    assert find_marker(environ, markers) == want


@pytest.mark.parametrize(("length", "want_len"), [(1, 1), (252, 252), (253, 253), (254, 253),
                                                   (10_000, 253)])
def test_value_is_bounded(length, want_len):
    value = "w" * length
    got = find_marker(env("PATH=/bin", f"WORKSPACE_ID={value}", "HOME=/root"), DEFAULT_MARKERS)
    assert got == ("WORKSPACE_ID", "w" * want_len)
    assert len(got[1]) <= MAX_WORKSPACE_ID


def test_long_value_cut_at_the_bound_is_still_reported():
    """A value longer than the bound is a workspace (cut), not "no workspace"."""
    got = find_marker(env(f"WORKSPACE_ID={'ab' * 500}"), DEFAULT_MARKERS)
    assert got is not None and got[1] == ("ab" * 500)[:MAX_WORKSPACE_ID]


@pytest.mark.parametrize("environ", [
    env("AWS_SECRET_ACCESS_KEY=hunter2", "WORKSPACE_ID=ws-1", "GITHUB_TOKEN=hunter2"),
    env("WORKSPACE_ID=ws-1", "AWS_SECRET_ACCESS_KEY=hunter2"),
    env("AWS_SECRET_ACCESS_KEY=hunter2", "WORKSPACE_ID=ws-1", terminated=False),
    env("NODEWARDEN_WORKSPACE_ID=", "PASSWORD=hunter2", "WORKSPACE_ID=ws-1"),
    env("WORKSPACE_ID_SECRET=hunter2", "WORKSPACE_ID=ws-1"),
    env("MY_WORKSPACE_ID=hunter2", "WORKSPACE_ID=ws-1", "WORKSPACE_ID_OLD=hunter2"),
])
def test_no_other_environ_value_is_returned(environ):
    got = find_marker(environ, DEFAULT_MARKERS)
    assert got == ("WORKSPACE_ID", "ws-1")
    assert "hunter2" not in repr(got)


@pytest.mark.parametrize("environ", [
    env("AWS_SECRET_ACCESS_KEY=hunter2", "PATH=/bin"),
    env("WORKSPACE_ID=", "TOKEN=hunter2"),
    env("MY_WORKSPACE_ID=hunter2"),
    env("WORKSPACE_ID_OLD=hunter2"),
])
def test_environ_without_a_marker_yields_nothing_at_all(environ):
    assert find_marker(environ, DEFAULT_MARKERS) is None


def test_workspace_id_bound_holds_in_characters_for_invalid_utf8():
    got = find_marker(b"WORKSPACE_ID=" + b"\xff" * 1000 + b"\0", ["WORKSPACE_ID"])
    assert got is not None and len(got[1]) <= MAX_WORKSPACE_ID
