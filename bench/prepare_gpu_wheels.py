"""Prepare a bare JAX-only GPU machine for bench/train_speed.py: the wheels it lacks, and the command to run.

The machine this is for has Python 3.12, JAX with CUDA, NumPy, SciPy, pandas,
OpenCV, Pillow, h5py, scikit-learn, tqdm, matplotlib and friends, but no
TensorFlow, no Keras, no albumentations, and no internet; at most 64 MiB of
files travel there with the repository. The benchmark's JAX path needs only
small pure-Python or manylinux wheels on top: Keras and albumentations (and
scikit-optimize, so that the whole ``carclf`` package imports), with their
dependencies that the machine does not have.

This downloads exactly those wheels (``pip download --no-deps
--only-binary=:all:`` for the machine's Python and platform) into ``.whl/``
(git-ignored), removes any other wheel there (two versions of one package
stop the install), checks every dependency they declare is either carried or
already on the machine, checks the wheels plus the repository's working tree
fit in the limit, and prints the command to run there. Usage::

    python bench/prepare_gpu_wheels.py [--dest .whl] [--python-version 3.12] [--limit-mib 64]

On your own GPU machine with internet access you do not need this: see the
README ("Benchmarks").
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: The wheels to carry: what requirements.txt pins (keras, albumentations, scikit-optimize) and the
#: versions of their dependencies tested with them here, minus what the GPU machine already has.
WHEELS = {
    "keras": "3.15.1",
    "namex": "0.1.0",
    "optree": "0.20.0",
    "albumentations": "2.0.8",
    "albucore": "0.0.24",
    "simsimd": "6.5.16",
    "stringzilla": "5.3.2",
    "pydantic": "2.14.4",
    "pydantic-core": "2.50.5",
    "annotated-types": "0.8.0",
    "typing-inspection": "0.4.5",
    "typing-extensions": "4.16.0",  # there too, but pydantic-core wants a recent one: carried to be sure
    "scikit-optimize": "0.10.2",
    "pyaml": "26.7.0",
}

#: What the GPU machine's image already holds (the device notes' package list), as far as the
#: benchmark's path goes.
ON_MACHINE = {
    "absl-py",
    "contourpy",
    "cycler",
    "fonttools",
    "h5py",
    "jax",
    "jaxlib",
    "joblib",
    "kiwisolver",
    "markdown-it-py",
    "matplotlib",
    "mdurl",
    "ml-dtypes",
    "numpy",
    "opencv-python-headless",
    "packaging",
    "pandas",
    "pillow",
    "pygments",
    "pyparsing",
    "python-dateutil",
    "pyyaml",
    "rich",
    "scikit-learn",
    "scipy",
    "six",
    "threadpoolctl",
    "tqdm",
    "typing-extensions",
}

#: Manylinux tags pip may take for the x86-64 machine (pip matches each exactly).
PLATFORMS = ["manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"] + [
    f"manylinux_2_{n}_x86_64" for n in range(5, 40) if n != 17
]

#: The models in the order the device run measures them: ResNet50 (the target) first, the slowest to
#: compile last, so that a run cut short by its time limit still has the figures that matter most.
DEVICE_MODELS = "resnet50,model1,alexnet,vgg16,efficientnetb0,imagenet,inceptionv3,densenet121"


def _norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def _wheel_name(path):
    """The (normalised) project name and version of a wheel file."""
    name, version = path.name.split("-")[:2]
    return _norm(name), version


def check_pins():
    """Warn where requirements.txt pins another version of a carried package than WHEELS."""
    path = REPO / "requirements.txt"
    if not path.is_file():
        return
    carried = {_norm(n): v for n, v in WHEELS.items()}
    for line in path.read_text().splitlines():
        match = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;#]+)", line)
        if match and carried.get(_norm(match[1]), match[2]) != match[2]:
            print(
                f"WARNING: requirements.txt pins {match[1]}=={match[2]}, this script carries "
                f"{carried[_norm(match[1])]}: update WHEELS"
            )


def download(dest, python_version):
    dest.mkdir(parents=True, exist_ok=True)
    wanted = {_norm(n): v for n, v in WHEELS.items()}
    for wheel in dest.glob("*.whl"):
        name, version = _wheel_name(wheel)
        if wanted.get(name) != version:
            print(f"removing {wheel.name} (not in the plan)")
            wheel.unlink()
    have = {_wheel_name(w)[0] for w in dest.glob("*.whl")}
    missing = [f"{n}=={v}" for n, v in WHEELS.items() if _norm(n) not in have]
    if missing:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            python_version,
            "--implementation",
            "cp",
            "-d",
            str(dest),
            "-q",
        ]
        for platform in PLATFORMS:
            command += ["--platform", platform]
        subprocess.run(command + missing, check=True)
    return sorted(dest.glob("*.whl"))


def requirements(wheel, python_version):
    """The names a wheel requires on the machine (Requires-Dist, markers evaluated for it; extras left out)."""
    from packaging.requirements import Requirement

    with zipfile.ZipFile(wheel) as archive:
        meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        text = archive.read(meta).decode("utf-8", "replace")
    machine = {
        "python_version": python_version,
        "python_full_version": f"{python_version}.0",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "extra": "",
    }
    names = []
    for line in text.splitlines():
        if line.startswith("Requires-Dist:"):
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is None or req.marker.evaluate(machine):
                names.append(_norm(req.name))
    return names


def tree_bytes(exclude):
    """Bytes of the working tree that travels: tracked and untracked-not-ignored files (``exclude`` left out).

    None when git is not there to say which files those are.
    """
    if shutil.which("git") is None:
        return None
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout
    total = 0
    for rel in filter(None, out.decode().split("\0")):
        path = REPO / rel
        if exclude in path.parents or not path.is_file():
            continue
        total += path.stat().st_size
    return total


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=REPO / ".whl", help="the wheel folder (default .whl/)")
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python (default 3.12)")
    parser.add_argument("--limit-mib", type=float, default=64, help="what may travel beside the repository")
    args = parser.parse_args(argv)
    dest = args.dest.resolve()

    check_pins()
    wheels = download(dest, args.python_version)
    carried = {_wheel_name(w)[0] for w in wheels}
    unmet = sorted(
        {(w.name, r) for w in wheels for r in requirements(w, args.python_version) if r not in carried | ON_MACHINE}
    )
    wheel_bytes = sum(w.stat().st_size for w in wheels)
    repo_bytes = tree_bytes(dest)
    if repo_bytes is None:
        print("git not found: the working tree's size is not counted")
        repo_bytes = 0
    total = wheel_bytes + repo_bytes
    limit = args.limit_mib * 2**20

    print(f"{'wheel':<64}{'KiB':>10}")
    for wheel in wheels:
        print(f"{wheel.name:<64}{wheel.stat().st_size / 1024:>10,.0f}")
    print(
        f"{len(wheels)} wheels: {wheel_bytes / 2**20:.1f} MiB; the repository's working tree: "
        f"{repo_bytes / 2**20:.1f} MiB; together {total / 2**20:.1f} MiB of {args.limit_mib:g} MiB"
    )
    for wheel, name in unmet:
        print(f"WARNING: {wheel} needs {name}, which is neither carried nor listed as on the machine")
    if total > limit:
        print(
            f"ERROR: {total / 2**20:.1f} MiB is over the {args.limit_mib:g} MiB limit: ignore or remove large "
            f"untracked files, or carry fewer wheels"
        )
        return 1

    inside = REPO in dest.parents
    folder = dest.relative_to(REPO).as_posix() if inside else str(dest)
    install = (
        f"python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "
        f"--target /tmp/site {folder}/*.whl && export PYTHONPATH=/tmp/site || exit; "
    )
    bench = f"KERAS_BACKEND=jax PYTHONUNBUFFERED=1 python3 bench/train_speed.py --models {DEVICE_MODELS} --budget-s 420"
    print()
    print("On the GPU machine (the device tool's run, from the repository root, carrying the wheel folder):")
    print(f"  command: {install}{bench} --json $OUT/train_speed.json 2>&1 | tee $OUT/train_speed.log")
    print(f'  carry: ["{folder}"]   timeout_s: 590')
    if not inside:
        print(f"  ({dest} is outside the repository: only a folder inside it, git-ignored, can be carried)")
    print()
    print("By hand on a JAX-only machine without internet (the repository and the wheel folder copied there):")
    print(f"  {install}")
    print(f"  {bench}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
