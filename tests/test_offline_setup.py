"""Set-up without network on a machine that has its own torch (tools/setup_env.sh --offline).

The wheelhouse is built here for this Python (tools/build_wheelhouse.sh); the "machine's torch" is
this test's interpreter. pip runs with no index and no configured wheel folders, so every package
the venv gets beyond that interpreter's must come from the wheelhouse.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FROM_THE_WHEELHOUSE = ("detectron2", "fvcore", "iopath", "yacs", "termcolor", "pycocotools", "faster_coco_eval",
                       "omegaconf", "antlr4", "hydra")


def offline_env(**extra):
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PYTHONWARNINGS": "ignore", **extra}


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wheelhouse")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    had_build = os.path.exists(os.path.join(REPO, "build"))
    build = subprocess.run(["bash", "tools/build_wheelhouse.sh", str(folder), "--python", version], cwd=REPO,
                           capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHON": sys.executable})
    assert build.returncode == 0, build.stderr[-3000:]
    assert "wheels," in build.stdout and (folder / "SHA256SUMS").exists()
    assert had_build or not os.path.exists(os.path.join(REPO, "build"))  # no scratch folder left in the checkout
    return folder


def setup_offline(venv, wheelhouse, python=sys.executable):
    return subprocess.run(["bash", "tools/setup_env.sh", "--offline", str(wheelhouse)], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env=offline_env(PYTHON=python, MUTUALNET_VENV=str(venv)))


def test_an_offline_venv_from_the_wheelhouse_imports_the_project_and_runs_a_test(wheelhouse, tmp_path):
    venv = tmp_path / "venv"
    setup = setup_offline(venv, wheelhouse)
    assert setup.returncode == 0, setup.stdout[-2000:] + setup.stderr[-3000:]
    assert "[setup] ready: detectron2" in setup.stdout
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import importlib, json, sys; names = sys.argv[1:]; "
         "print(json.dumps({n: importlib.import_module(n).__file__ for n in names}))",
         "torch", "mutualnet_det", *FROM_THE_WHEELHOUSE],
        capture_output=True, text=True, timeout=300, env=offline_env())
    assert where.returncode == 0, where.stderr[-3000:]
    files = json.loads(where.stdout.strip().splitlines()[-1])
    assert not files["torch"].startswith(str(venv))  # the machine's torch
    assert files["mutualnet_det"].startswith(os.path.join(REPO, "mutualnet_det"))  # this checkout, editable
    for name in FROM_THE_WHEELHOUSE:
        assert files[name].startswith(str(venv)), (name, files[name])
    test = subprocess.run([str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_width.py"], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=offline_env(OMP_NUM_THREADS="1"))
    assert test.returncode == 0 and " passed" in test.stdout, test.stdout[-3000:]


def test_a_changed_wheel_or_an_interpreter_without_torch_is_refused(wheelhouse, tmp_path):
    tampered = tmp_path / "wheelhouse"
    shutil.copytree(wheelhouse, tampered)
    wheel = sorted(tampered.glob("yacs-*.whl"))[0]
    wheel.write_bytes(wheel.read_bytes() + b"\0")
    refused = setup_offline(tmp_path / "venv", tampered)
    assert refused.returncode == 1 and "does not match its SHA256SUMS" in refused.stderr
    assert not (tmp_path / "venv").exists()
    no_torch = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(no_torch)], check=True, timeout=120)
    refused = setup_offline(tmp_path / "venv", wheelhouse, python=str(no_torch / "bin" / "python"))
    assert refused.returncode == 1 and "cannot import torch and torchvision" in refused.stderr
    assert not (tmp_path / "venv").exists()
    missing = setup_offline(tmp_path / "venv", tmp_path / "nowhere")
    assert missing.returncode == 1 and "build_wheelhouse.sh" in missing.stderr
