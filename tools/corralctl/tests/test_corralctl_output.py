"""The parts of corralctl's output that need no cluster: tables, errors in each of the gateway's
shapes, and a pull's progress without a terminal."""

from __future__ import annotations

import io

import pytest

from corralctl.cli import main, parser
from corralctl.client import error_of
from corralctl.progress import PullProgress, bar
from corralctl.tables import millis, size, table


def test_tables_align_columns_and_show_missing_values_as_a_dash() -> None:
    shown = table(["ID", "NAME", "N"], [["a", None, 1], ["bbbb", "x", True]])
    assert shown.splitlines() == ["ID    NAME  N", "a     -     1", "bbbb  x     yes"]


def test_sizes_and_durations() -> None:
    assert (size(2_019_393_189), size(512), size(None)) == ("2.0 GB", "512 B", "-")
    assert (millis(350), millis(4200), millis(185_000)) == ("350 ms", "4.2 s", "3m05s")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            b'{"error": {"type": "session_not_found", "message": "session \'x\' not found"}}',
            "404 session_not_found: session 'x' not found",
        ),
        (b'{"error": "model \\"x\\" not found"}', '404: model "x" not found'),
        (b"<html>Not Found</html>", "404: <html>Not Found</html>"),
    ],
)
def test_errors_keep_the_servers_words(raw: bytes, expected: str) -> None:
    assert str(error_of(404, raw)) == expected


def test_auth_errors_say_what_is_missing() -> None:
    assert "CORRAL_API_KEY" in str(error_of(401, b'{"error": {"message": "no key"}}'))
    assert "admin key" in str(error_of(403, b'{"error": {"message": "admins only"}}'))


def test_a_pull_without_a_terminal_writes_a_line_per_step_and_tenth() -> None:
    out = io.StringIO()
    progress = PullProgress(out, live=False)
    progress.update({"status": "pulling manifest"})
    for completed in (0, 250, 260, 500, 1000):
        progress.update(
            {"status": "pulling sha256:abcdef0123456789", "total": 1000, "completed": completed}
        )
    progress.update({"status": "success"})
    progress.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "pulling manifest"
    assert [line.split("]")[1].split()[0] for line in lines[1:-1]] == ["0%", "25%", "50%", "100%"]
    assert lines[1].startswith("pulling abcdef012345  [")
    assert lines[-1] == "success"
    assert bar(1, 2, width=4) == "[##--]  50%"


def test_global_options_may_follow_the_command() -> None:
    args = parser().parse_args(["queue", "list", "--json", "--url", "http://gw:1"])
    assert (args.json, args.url) == (True, "http://gw:1")
    assert parser().parse_args(["--json", "dlq"]).json is True


def test_a_bad_limit_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--url", "http://127.0.0.1:9", "keys", "create", "--limit", "speed=9"])
    assert code == 2
    assert "use NAME=N" in capsys.readouterr().err
