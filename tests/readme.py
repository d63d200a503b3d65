"""The README's shell commands, read from README.md, so what it tells people to run is tested.

tests/browser/test_readme.py runs the "Run it" command; CI (`.ci/run`) runs the "Test it"
command's set-up and then its test step. Standard library only: CI calls this
with the system Python before any virtualenv exists:

    python3 tests/readme.py setup   # "Test it" without its last step
    python3 tests/readme.py test    # its last step, the test run
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def command(section: str, readme: Path = README) -> str:
    """The first ```sh block under `## <section>`, which must be a single command line."""
    text = readme.read_text()
    heading = re.search(rf"^## {re.escape(section)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    if heading is None:
        raise ValueError(f"{readme.name} has no '## {section}' section")
    block = re.search(r"^```sh\n(.*?)^```", heading.group(1), re.M | re.S)
    if block is None:
        raise ValueError(f"{readme.name}: '## {section}' has no ```sh block")
    lines = [line for line in block.group(1).splitlines() if line.strip()]
    if len(lines) != 1:
        raise ValueError(f"{readme.name}: the ```sh block under '## {section}' is not one line")
    return lines[0].strip()


def split_test_it(readme: Path = README) -> tuple[str, str]:
    """The "Test it" command split into its set-up and its last step, which runs pytest."""
    *setup, test = command("Test it", readme).split(" && ")
    if not setup or not test.startswith(".venv/bin/pytest"):
        raise ValueError(f"{readme.name}: 'Test it' should read '<set-up> && .venv/bin/pytest ...'")
    return " && ".join(setup), test


def main(argv: list[str]) -> int:
    if argv not in (["setup"], ["test"]):
        print("usage: python3 tests/readme.py setup|test", file=sys.stderr)
        return 2
    setup, test = split_test_it()
    print(setup if argv == ["setup"] else test)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
