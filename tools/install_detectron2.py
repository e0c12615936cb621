"""Install Detectron2 into the running Python environment, in the order docs/installation.md describes.

Detectron2 is not published on PyPI. This script:
  1. keeps a Detectron2 that is already importable (e.g. one a user built from source with CUDA);
  2. tries the official source build when MUTUALNET_D2_SOURCE (a git URL or a local checkout) is
     set, which needs network access to that source and a compiler;
  3. otherwise installs the pure-Python part of the pinned `sal-detectron2==0.7.2` wheel (upstream
     Detectron2 at a59f056 re-published by a third party), after checking its sha256. Its compiled
     `_C` is for CPython 3.10 and is dropped; `mutualnet_det` supplies a stand-in (see
     `mutualnet_det/compat.py`).
Run with the interpreter of the target environment: `python tools/install_detectron2.py`.
`python tools/install_detectron2.py --wheel-into DIR` only writes the checked, re-packed wheel into
DIR (tools/build_wheelhouse.sh).
"""
import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import zipfile

PINNED_WHEEL = "sal-detectron2==0.7.2"
PINNED_SHA256 = "491af0c7f79bdb2d178e46f6cb16a97c4ac968d45c41ea3f6b6435d59bbee561"
# Runtime dependencies of Detectron2 (its setup.py), installed explicitly because the wheel is
# installed with --no-deps (its metadata pins numpy<2, which Python 3.11 + torch 2.14 do not need).
RUNTIME_DEPS = [
    "Pillow>=7.1", "matplotlib", "pycocotools>=2.0.2", "termcolor>=1.1", "yacs>=0.1.8",
    "tabulate", "cloudpickle", "tqdm>4.29.0", "tensorboard", "fvcore>=0.1.5,<0.1.6",
    "iopath>=0.1.7,<0.1.10", "omegaconf>=2.1,<2.4", "hydra-core>=1.1", "packaging",
    # model_zoo imports pkg_resources, removed from setuptools 81.
    "setuptools<81",
    # Visualizer and some transforms import cv2.
    "opencv-python-headless",
]


def pip(*args):
    subprocess.check_call([sys.executable, "-m", "pip", *args])


def detectron2_importable():
    return importlib.util.find_spec("detectron2") is not None


def try_source_build(source):
    print(f"[install_detectron2] building Detectron2 from source: {source}")
    try:
        pip("install", "--no-build-isolation", source if os.path.isdir(source) else f"git+{source}")
        return True
    except subprocess.CalledProcessError as err:
        print(f"[install_detectron2] source build failed ({err}); falling back to the pinned wheel")
        return False


def pinned_pure_wheel(folder):
    """Download the pinned wheel into `folder`, check its sha256, re-pack it as a pure-Python
    wheel there (the CPython-3.10 extension and its RECORD line dropped); return its path."""
    with tempfile.TemporaryDirectory() as tmp:
        pip("download", "--no-deps", "--only-binary", ":all:", "--python-version", "3.10",
            PINNED_WHEEL, "-d", tmp)
        (name,) = [f for f in os.listdir(tmp) if f.endswith(".whl")]
        path = os.path.join(tmp, name)
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        if digest != PINNED_SHA256:
            sys.exit(f"[install_detectron2] sha256 of {name} is {digest}, expected {PINNED_SHA256}: "
                     "refusing to install an unverified re-publication of Detectron2.")
        pure = os.path.join(folder, name.replace("-cp310-none-any", "-py3-none-any"))
        with zipfile.ZipFile(path) as src, zipfile.ZipFile(pure, "w", zipfile.ZIP_DEFLATED) as dst:
            for item in src.infolist():
                if item.filename.endswith(".so"):
                    continue
                data = src.read(item.filename)
                if item.filename.endswith(".dist-info/RECORD"):
                    data = b"\n".join(l for l in data.splitlines() if b".so," not in l) + b"\n"
                if item.filename.endswith(".dist-info/WHEEL"):
                    data = data.replace(b"cp310-cp310-linux_x86_64", b"py3-none-any")
                dst.writestr(item, data)
    return pure


def install_pinned_wheel():
    with tempfile.TemporaryDirectory() as tmp:
        pip("install", "--no-deps", pinned_pure_wheel(tmp))


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--wheel-into":  # tools/build_wheelhouse.sh
        print(pinned_pure_wheel(sys.argv[2]))
        return
    if detectron2_importable():
        print("[install_detectron2] Detectron2 is already importable; keeping it.")
    else:
        source = os.environ.get("MUTUALNET_D2_SOURCE")
        if not (source and try_source_build(source)):
            install_pinned_wheel()
    pip("install", *RUNTIME_DEPS)


if __name__ == "__main__":
    main()
