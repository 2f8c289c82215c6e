"""Tables, JSON and progress for the terminal, through rich: a terminal gets colour and a live
progress bar, a pipe or a file gets plain text and plain progress lines (no escape codes, no
redraws), so scripts and logs read the same words a person sees.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Self, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress
from rich.table import Table
from rich.text import Text

PIPE_WIDTH = 10_000
"""A pipe has no width: rows are never wrapped nor cut, whatever their length."""


def console(file: TextIO | None = None) -> Console:
    """A rich console on ``file`` (default: stdout at the time of the call)."""
    stream = file if file is not None else sys.stdout
    terminal = stream.isatty()
    return Console(
        file=stream,
        highlight=False,
        width=None if terminal else PIPE_WIDTH,
        force_terminal=terminal,
        soft_wrap=not terminal,
    )


def print_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, file: TextIO | None = None
) -> None:
    """Columns separated by two spaces, headers first; cells are text, never markup."""
    table = Table(box=None, show_edge=False, pad_edge=False, padding=(0, 2, 0, 0))
    out = console(file)
    for header in headers:
        table.add_column(header, header_style="bold" if out.is_terminal else "", no_wrap=True)
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    out.print(table)


def print_json(data: Any, *, file: TextIO | None = None) -> None:
    """Indented JSON; coloured on a terminal."""
    text = json.dumps(data, default=str, indent=2)
    out = console(file)
    if out.is_terminal:
        out.print_json(text)
    else:
        out.file.write(text + "\n")


class _Rate(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f}/s" if speed else "-/s")


class Progress:
    """Progress of ``total`` items: a live bar on a terminal, else one plain line at most every
    ``every_s`` seconds and one at the end. :meth:`log` prints a line without breaking either."""

    def __init__(
        self,
        total: int,
        label: str,
        *,
        file: TextIO | None = None,
        every_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._file = file if file is not None else sys.stderr
        self._total = total
        self._label = label
        self._every = every_s
        self._clock = clock
        self._started = clock()
        self._last_line: float | None = None
        self._done = 0
        self._ended = False
        self._console = console(self._file)
        self._live: RichProgress | None = None
        if self._console.is_terminal:
            self._live = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                _Rate(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self._console,
            )
            self._task = self._live.add_task(label, total=total)

    def __enter__(self) -> Self:
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def update(self, done: int, total: int | None = None) -> None:
        if total is not None:
            self._total = total
        self._done = done
        if self._live is not None:
            self._live.update(self._task, completed=done, total=self._total)
            return
        now = self._clock()
        due = self._last_line is None or now - self._last_line >= self._every
        if due or done >= self._total:
            self._plain_line(now)

    def _plain_line(self, now: float) -> None:
        if self._ended:
            return
        self._ended = self._done >= self._total
        self._last_line = now
        elapsed = max(now - self._started, 1e-9)
        self._file.write(
            f"{self._label} {self._done}/{self._total}"
            f" {self._done / elapsed:.1f}/s {elapsed:.1f}s\n"
        )
        self._file.flush()

    def log(self, message: str) -> None:
        if self._live is not None:
            self._live.console.print(Text(message))
        else:
            self._file.write(message + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
