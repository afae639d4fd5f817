"""Progress where there is no terminal: plain lines on stderr, every few seconds, none with -q."""
import io
import re

from typer.testing import CliRunner

from csra_cli.cli import app
from csra_cli.console import LogProgress, clock

runner = CliRunner()
LINE = re.compile(r"^tagging: (\d+)/4 \(\d+%\), [\d.]+ img/s, ETA (\d+s|\d+m\d\ds|\?)$")


def test_tag_writes_plain_progress_lines_to_a_log(image_folder, tiny_model_path, monkeypatch):
    monkeypatch.setenv("CSRA_PROGRESS_SECONDS", "0")  # a line per batch (5 s apart by default)
    args = ["tag", str(image_folder), "-m", str(tiny_model_path), "-b", "1", "-j", "0"]
    result = runner.invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("tagging:")]
    assert [int(LINE.match(ln).group(1)) for ln in lines] == [1, 2, 3, 4]
    assert "\r" not in result.stderr and "\x1b[" not in result.stderr  # nothing a log cannot show

    quiet = runner.invoke(app, args + ["-q"], catch_exceptions=False)
    assert quiet.exit_code == 0 and "tagging:" not in quiet.stderr


def test_log_progress_waits_between_lines():
    out = io.StringIO()
    p = LogProgress(100, "scoring", every=3600, stream=out)
    p.advance(10)
    assert out.getvalue() == ""  # not yet time for a line
    p.every = 0
    p.advance(10)
    assert re.fullmatch(r"scoring: 20/100 \(20%\), [\d.]+ img/s, ETA \S+\n", out.getvalue())
    assert LogProgress(None, "tagging", every=0).line(p.started + 2).startswith("tagging: 0 images")
    assert (clock(5), clock(125), clock(3725)) == ("5s", "2m05s", "1h02m05s")


def test_a_training_status_off_a_terminal_is_a_plain_line_now_and_then(monkeypatch, capsys):
    from csra_cli import console

    monkeypatch.setattr(console, "_last_status_line", float("-inf"))
    monkeypatch.setenv("CSRA_STATUS_SECONDS", "3600")
    console.status("features: 16/3475")
    console.status("features: 32/3475")  # within the hour: not repeated
    err = capsys.readouterr().err
    assert err == "features: 16/3475\n"  # no \r or escape codes in a log
    monkeypatch.setenv("CSRA_STATUS_SECONDS", "0")
    console.status("epoch 1: step 11/218")
    assert capsys.readouterr().err == "epoch 1: step 11/218\n"
