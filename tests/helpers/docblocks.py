"""The runnable blocks of a doc: each ``sh`` block right after a ``<!-- doc-test: run -->`` line."""

from __future__ import annotations

import re
from pathlib import Path

_BLOCK = re.compile(r"<!-- doc-test: (\w+) -->\n```(\w+)\n(.*?)```", re.S)


def run_blocks(doc: Path, *, at_least: int) -> str:
    """The marked blocks of ``doc`` joined into one script, in order."""
    blocks = []
    for m in _BLOCK.finditer(doc.read_text()):
        assert (m.group(1), m.group(2)) == ("run", "sh"), (
            f"{doc.name}: unknown doc-test block {m.group(0)[:60]!r}"
        )
        blocks.append(m.group(3))
    assert len(blocks) >= at_least, f"{doc.name} lost runnable blocks: {len(blocks)} of at least {at_least}"
    return "\n".join(blocks)
