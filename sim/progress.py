"""The progress bar of the benchmark commands: on stderr, shown on a terminal by default."""

from __future__ import annotations

import sys
from contextlib import contextmanager

from tqdm import tqdm

__all__ = ["progress_steps"]


@contextmanager
def progress_steps(descriptions, progress: bool | None = None):
    """A bar over the steps ``descriptions`` (one text each), shown on stderr when
    ``progress`` (``None``: when stderr is a terminal) and removed at the end.

    Yields ``advance()``: the current step is done and the next one's text is shown.
    """
    descriptions = list(descriptions)
    if not descriptions:
        raise ValueError("descriptions must name at least one step, not []")
    if progress is None:
        progress = sys.stderr.isatty()
    bar = tqdm(total=len(descriptions), desc=descriptions[0], disable=not progress,
               file=sys.stderr, leave=False)
    done = 0

    def advance():
        nonlocal done
        bar.update()
        done += 1
        if done < len(descriptions):
            bar.set_description(descriptions[done])

    try:
        yield advance
    finally:
        bar.close()
