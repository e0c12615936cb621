import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # tests/helpers.py
import mutualnet_det  # noqa: E402,F401  first, so Detectron2 sees the _C stand-in (see compat.py)


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs CUDA; skipped without it (tools/gpu_check.sh runs `-m cuda`)")
