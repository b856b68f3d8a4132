"""Progress bars on the console for the commands' long loops (rendering, style transfer, prediction):
rich when installed, else tqdm, else nothing. Torch-free."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

__all__ = ["progress_bar", "tracked"]


@contextlib.contextmanager
def progress_bar(total: int, desc: str, enabled: bool) -> Iterator[Callable[[], None]]:
    """Yields an ``advance()`` callable; uses rich, else tqdm, else nothing."""
    if not enabled or total <= 0:
        yield lambda: None
        return
    try:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    except ImportError:
        try:
            from tqdm import tqdm
        except ImportError:
            yield lambda: None
            return
        bar = tqdm(total=total, desc=desc, unit="img")
        try:
            yield lambda: bar.update(1)
        finally:
            bar.close()
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=False,
    ) as prog:
        task = prog.add_task(desc, total=total)
        yield lambda: prog.advance(task)


def tracked(items: Iterable, total: int, desc: str, enabled: bool = True) -> Iterator:
    """``items``, one by one, with a :func:`progress_bar` of ``total`` steps advanced after each."""
    with progress_bar(total, desc, enabled) as advance:
        for item in items:
            yield item
            advance()
