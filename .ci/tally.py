"""Print one closing line, 'N passed, N failed, N skipped', from the JUnit XML
files the test sessions wrote; exit non-zero if nothing ran or anything failed."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def main(folder: str) -> int:
    total = failed = skipped = 0
    for report in sorted(Path(folder).glob("*.xml")):
        root = ET.parse(report).getroot()
        for suite in root.iter("testsuite"):
            total += int(suite.get("tests", 0))
            failed += int(suite.get("failures", 0)) + int(suite.get("errors", 0))
            skipped += int(suite.get("skipped", 0))
    passed = total - failed - skipped
    print(f"tests: {passed} passed, {failed} failed, {skipped} skipped")
    return 0 if total and not failed else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
