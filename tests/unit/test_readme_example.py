"""The README shows the subscriber example exactly as the file the integration test runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Subscribing to stage changes"


def test_the_readme_block_is_the_example_file() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert SECTION in readme
    section = readme.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert blocks, "the section has no ```python block"
    example = (ROOT / "docs" / "examples" / "subscribe_stage_changes.py").read_text(encoding="utf-8")
    assert blocks[0] == example, "copy docs/examples/subscribe_stage_changes.py into the README's python block"
