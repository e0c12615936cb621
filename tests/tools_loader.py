"""Import the command-line tools (tools/*.py are scripts, not a package) for tests."""
import importlib.util
import os

from helpers import REPO


def load_tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def convert_main(argv):
    return load_tool("convert_mutualnet_imagenet").main(argv)
