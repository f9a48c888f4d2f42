"""What long commands show while they work: live progress on a terminal, and nothing more (or
one plain line a step) when the output goes to a file, a pipe or a log."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

# How often the terminal line is redrawn: often enough to look alive, rarely enough to cost
# nothing next to the import itself.
REFRESHES_PER_S = 4


class _Rows(ProgressColumn):
    """Rows read so far (blank for a task that reads none)."""

    def render(self, task: Task) -> Text:
        rows: int | None = task.fields.get("rows")
        return Text("" if rows is None else f"{rows:,} rows")


class _RowsPerSecond(ProgressColumn):
    """Rows read over the time spent reading them (steadier than rich's windowed speed)."""

    def render(self, task: Task) -> Text:
        rows: int | None = task.fields.get("rows")
        elapsed: float = task.fields.get("read_s") or task.elapsed or 0.0
        if rows is None:
            return Text("")
        return Text(f"{rows / elapsed if elapsed > 0 else 0.0:,.0f} rows/s")


class RowProgress:
    """Rows of a CSV byte stream read so far, rows/s and, when the size is known, the share
    of the file: live on a terminal, silent elsewhere. Use as a context manager."""

    def __init__(self, console: Console, description: str, total_bytes: int | None) -> None:
        self._progress = Progress(
            SpinnerColumn(finished_text="[green]✓"),
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            _Rows(),
            _RowsPerSecond(),
            TimeElapsedColumn(),
            console=console,
            refresh_per_second=REFRESHES_PER_S,
            disable=not console.is_terminal,
        )
        self._description = description
        self._total = total_bytes
        self._task: TaskID | None = None
        self._applying: TaskID | None = None
        self._lines = 0

    def __enter__(self) -> RowProgress:
        self._progress.start()
        self._task = self._progress.add_task(self._description, total=self._total, rows=0)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None and self._applying is not None:
            self._progress.update(self._applying, total=1, completed=1)
        self._progress.stop()

    @property
    def rows(self) -> int:
        """Data rows read so far (lines after the header)."""
        return max(0, self._lines - 1)

    async def track(self, chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        """`chunks` unchanged, counting their lines as they pass; once they are all read, the
        line says the rows are being applied."""
        assert self._task is not None, "use RowProgress as a context manager"
        line_open = False
        async for chunk in chunks:
            if chunk:
                self._lines += chunk.count(b"\n")
                line_open = not chunk.endswith(b"\n")
            self._progress.update(self._task, advance=len(chunk), rows=self.rows)
            yield chunk
        if line_open:
            self._lines += 1  # a last line without a newline is a row too
        task = self._progress.tasks[self._task]
        self._progress.update(self._task, total=task.completed, rows=self.rows, read_s=task.elapsed)
        # Everything read; the import is done once Postgres and Redis have taken it.
        self._applying = self._progress.add_task("applying to Postgres and Redis", total=None)


@contextlib.contextmanager
def step(console: Console, doing: str, prefix: str) -> Iterator[None]:
    """While the block runs: a spinner saying `doing` on a terminal, else `doing` as one plain
    line (with `prefix`) before it starts."""
    if console.is_terminal:
        with console.status(doing):
            yield
        return
    console.print(f"{prefix}{doing}", markup=False, highlight=False, soft_wrap=True)
    yield
