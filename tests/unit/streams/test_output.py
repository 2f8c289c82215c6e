"""Tables, JSON and progress: plain text in a pipe, rich output on a terminal."""

from __future__ import annotations

import io
import json

from jobstream.streams.output import Progress, print_json, print_table


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_table_in_a_pipe_is_plain_columns_never_wrapped_nor_markup() -> None:
    out = io.StringIO()
    long = "x" * 300
    print_table(
        ["ID", "MESSAGE"], [["a:0:1", "[bold]not markup[/bold]"], ["a:0:2", long]], file=out
    )
    lines = out.getvalue().splitlines()
    assert "\x1b" not in out.getvalue()
    assert lines[0].split() == ["ID", "MESSAGE"]
    assert lines[1].split() == ["a:0:1", "[bold]not", "markup[/bold]"]
    assert lines[2].split() == ["a:0:2", long]
    assert lines[1].index("[bold]") == lines[0].index("MESSAGE")  # aligned columns


def test_a_table_on_a_terminal_gets_styles() -> None:
    out = Terminal()
    print_table(["ID"], [["a"]], file=out)
    assert "\x1b[" in out.getvalue()


def test_json_in_a_pipe_is_plain_and_parses() -> None:
    out = io.StringIO()
    print_json({"a": 1, "when": object.__name__}, file=out)
    assert "\x1b" not in out.getvalue()
    assert json.loads(out.getvalue()) == {"a": 1, "when": "object"}


def test_progress_in_a_pipe_is_plain_lines_throttled_and_always_the_end() -> None:
    now = [0.0]
    out = io.StringIO()
    with Progress(3, "replay", file=out, every_s=10.0, clock=lambda: now[0]) as bar:
        now[0] = 1.0
        bar.update(1)
        now[0] = 2.0
        bar.update(2)  # within 10 s of the last line: not printed
        bar.log("warning: something")
        now[0] = 4.0
        bar.update(3)
        bar.update(3)  # the end is printed once
    text = out.getvalue()
    assert "\r" not in text
    assert "\x1b" not in text
    assert text.splitlines() == [
        "replay 1/3 1.0/s 1.0s",
        "warning: something",
        "replay 3/3 0.8/s 4.0s",
    ]


def test_progress_on_a_terminal_is_a_live_bar() -> None:
    out = Terminal()
    with Progress(2, "jobs", file=out) as bar:
        bar.update(2)
    text = out.getvalue()
    assert "2/2" in text
    assert "\x1b[" in text
