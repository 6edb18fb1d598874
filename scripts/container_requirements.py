"""Print the requirements of pyproject.toml, one a line, so an image can install them before the source.

    python3 container_requirements.py pyproject.toml            # base (serving) dependencies
    python3 container_requirements.py pyproject.toml train      # the `train` extra only

Only the dependency lists are read, so the layer that installs them stays cached until they change.
Standard library only: it runs on the bare python3 of the base image.
"""

from __future__ import annotations

import sys
import tomllib


def requirements(pyproject: str, extras: list[str]) -> list[str]:
    with open(pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    if not extras:
        return list(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    missing = [e for e in extras if e not in optional]
    if missing:
        raise SystemExit(f"{pyproject}: no optional dependencies named {', '.join(missing)}")
    return [r for e in extras for r in optional[e]]


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    print("\n".join(requirements(sys.argv[1], sys.argv[2:])))
