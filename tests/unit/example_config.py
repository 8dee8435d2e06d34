"""The example configuration, with one of its commented-out driver blocks switched on."""

from __future__ import annotations

import re
from pathlib import Path

EXAMPLE = Path(__file__).parents[2] / "config" / "gateway.example.yaml"


def example_with(block: str, folder: Path) -> Path:
    """Write the example with the lines between `# >>> block` and `# <<< block` uncommented."""
    text = EXAMPLE.read_text()
    found = re.search(rf"(?ms)^  # >>> {block}\n(.*?)^  # <<< {block}\n", text)
    assert found is not None, f"the example's {block} block is marked with # >>> / # <<<"
    uncommented = re.sub(r"(?m)^  # ?", "  ", found.group(1))
    path = folder / "gateway.yaml"
    path.write_text(text.replace(found.group(0), uncommented))
    return path
