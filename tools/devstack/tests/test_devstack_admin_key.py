"""`make run`'s admin key: generated once under the data dir (0600), shown once, reused."""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral_common.api_keys import is_well_formed
from corral_devstack import admin_key
from corral_devstack.admin_key import AdminKeyError, announce, bootstrap, ensure

URL = "http://127.0.0.1:8000"


@pytest.fixture
def no_umask() -> Iterator[None]:
    """The most permissive umask: the file's mode must come from the code, not the umask."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_nothing_without_auth_or_with_an_operator_key(tmp_path: Path) -> None:
    assert bootstrap({}, tmp_path) is None
    assert bootstrap({"CORRAL_AUTH": "off"}, tmp_path) is None
    assert bootstrap({"CORRAL_AUTH": "on", "CORRAL_ADMIN_KEY": "x" * 40}, tmp_path) is None
    assert not (tmp_path / admin_key.FILE_NAME).exists()


def test_the_first_run_writes_a_key_only_its_owner_can_read(tmp_path: Path, no_umask: None) -> None:
    data_dir = tmp_path / "data"
    admin = bootstrap({"CORRAL_AUTH": "on"}, data_dir)
    assert admin is not None
    assert admin.created
    assert admin.path == data_dir / "admin.key"
    assert mode(admin.path) == 0o600
    assert admin.path.read_text().strip() == admin.key
    assert is_well_formed(admin.key)
    assert admin.key not in repr(admin)
    assert sorted(p.name for p in data_dir.iterdir()) == ["admin.key"], "no temporary file left"


def test_later_runs_reuse_the_key_and_do_not_print_it(tmp_path: Path) -> None:
    first = ensure(tmp_path / "admin.key")
    again = bootstrap({"CORRAL_AUTH": " ON "}, tmp_path)
    assert again is not None
    assert (again.key, again.created) == (first.key, False)

    shown, later = io.StringIO(), io.StringIO()
    announce(first, URL, shown)
    announce(again, URL, later)
    assert first.key in shown.getvalue()
    for usage in ("/admin/keys", '"scope": "user"', "ollama.Client", "openai.OpenAI", URL):
        assert usage in shown.getvalue()
    assert first.key not in later.getvalue()
    assert str(first.path) in later.getvalue()
    assert "Authorization: Bearer" in later.getvalue()


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = ensure(tmp_path / "admin.key").path
    path.chmod(0o644)
    with pytest.raises(AdminKeyError, match="chmod 600"):
        ensure(path)


@pytest.mark.parametrize("content", ["", "short\n"])
def test_a_key_file_without_a_usable_key_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "admin.key"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(AdminKeyError, match="delete it"):
        ensure(path)


def test_a_symlink_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("x" * 50)
    target.chmod(0o600)
    (tmp_path / "admin.key").symlink_to(target)
    with pytest.raises(AdminKeyError):
        ensure(tmp_path / "admin.key")


def test_a_run_that_loses_the_race_takes_the_winners_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "admin.key"
    winner = "w" * 46
    real_link = os.link

    def link_after_the_winner(src: str | Path, dst: str | Path) -> None:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, winner.encode())
        os.close(fd)
        real_link(src, dst)

    monkeypatch.setattr(os, "link", link_after_the_winner)
    admin = ensure(path)
    assert (admin.key, admin.created) == (winner, False)
    assert [p.name for p in tmp_path.iterdir()] == ["admin.key"]
