"""Packaging: a light core, ranges in pyproject.toml, and a lock file inside those ranges."""

import json
import pathlib
import subprocess
import sys
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = pathlib.Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"
CORE = {"jax", "optax", "numpy"}
# Top-level modules of the train / data / bench extras; the core must import none of them.
HEAVY = [
    "flax",
    "orbax",
    "ml_collections",
    "tensorflow",
    "tensorboard",
    "tensorflow_datasets",
    "matplotlib",
    "librosa",
    "soundfile",
    "av",
    "torch",
]
# Extras `make install` does not install, so their own packages are not in the lock.
UNLOCKED = {"torch", "torchvision", "transformers", "timm"}


def _project() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def _requirements() -> list[tuple[str, Requirement]]:
    """Every requirement of pyproject.toml with its group ('core' or the extra's name)."""
    project = _project()
    reqs = [("core", Requirement(r)) for r in project["dependencies"]]
    for extra, entries in project["optional-dependencies"].items():
        reqs += [(extra, Requirement(r)) for r in entries]
    own = canonicalize_name(project["name"])
    return [(group, r) for group, r in reqs if canonicalize_name(r.name) != own]


def _lock() -> dict[str, Version]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"not an exact pin in {LOCK.name}: {line!r}"
            pins[canonicalize_name(name)] = Version(version)
    return pins


def test_core_import_is_light():
    code = (
        "import sys, json\n"
        "import mlb_jax.balancing\n"
        "from mlb_jax.balancing import scale_by_modality\n"
        "import mlb_jax\n"
        "mlb_jax.mlb_gradient_transform\n"
        f"heavy = {HEAVY!r}\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & set(heavy))))\n"
    )
    # cwd=ROOT with `-c`: this checkout's mlb_jax, not another editable install's.
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_core_dependencies_are_jax_optax_numpy():
    names = {canonicalize_name(Requirement(r).name) for r in _project()["dependencies"]}
    assert names == CORE


@pytest.mark.parametrize("group_req", _requirements(), ids=lambda g: f"{g[0]}:{g[1].name}")
def test_requirement_is_a_range(group_req):
    _, req = group_req
    ops = {spec.operator for spec in req.specifier}
    assert not ops & {"==", "==="}, f"{req} pins an exact version"
    assert ">=" in ops, f"{req} has no lower bound"
    assert "<" in ops, f"{req} has no upper bound"


def test_lock_pins_every_requirement_inside_its_range():
    pins = _lock()
    for group, req in _requirements():
        name = canonicalize_name(req.name)
        if name in UNLOCKED:
            assert name not in pins, f"{name} is in the lock but `make install` skips it"
            continue
        assert name in pins, f"{req} ({group}) is not pinned in {LOCK.name}"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{LOCK.name} pins {name}=={pins[name]}, outside {req} ({group})"
        )


def test_make_install_uses_the_lock():
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install --quiet -c $(LOCK) -e '.[test]'" in makefile
    assert "LOCK := requirements/lock.txt" in makefile
