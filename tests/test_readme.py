"""Every command in README.md and docs/*.md runs as written, as far as it can without training:
each tool's arguments pass that tool's own argument parser (the tool is run up to its
`parse_args` and stopped there), a command's config file and trailing KEY VALUE overrides merge
into a config that `validate_mutualnet_config` accepts, scripts and repository files it names
exist, and the Python API the README shows exists. The README's results table is the study of
record's `results.json`, so the two cannot drift apart."""
import argparse
import glob
import json
import os
import re
import runpy
import shlex
import sys

import pytest
from detectron2.config import get_cfg
from helpers import REPO

import mutualnet_det
from mutualnet_det import add_mutualnet_config, validate_mutualnet_config

PAGES = ["README.md"] + sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md")))
PYTHONS = {".venv/bin/python", "python", "python3"}
SEPARATORS = {"&&", "||", ";", "|"}
# Paths a command may name that a user creates (outputs, their own images) rather than the repo.
USER_PATH_PREFIXES = ("output/", "out/", "my_images", "checkpoints/", "datasets/", "A/", "B/", "DIR")


def fenced_blocks(text, language):
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def commands_of(page):
    """(page, command tokens) for each shell command in the page's ```bash blocks: continuation
    lines joined, comments dropped, `a && b` split, leading VAR=value assignments removed."""
    text = open(os.path.join(REPO, page)).read()
    found = []
    for block in fenced_blocks(text, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line, comments=True)
            command = []
            for token in tokens + [";"]:
                if token in SEPARATORS:
                    while command and re.match(r"^[A-Z_][A-Z0-9_]*=", command[0]):
                        command.pop(0)
                    if command:
                        found.append((page, command))
                    command = []
                else:
                    command.append(token)
    return found


ALL_COMMANDS = [c for page in PAGES for c in commands_of(page)]
PYTHON_COMMANDS = [c for c in ALL_COMMANDS if c[1][0] in PYTHONS and c[1][1].endswith(".py")]


class Parsed(Exception):
    def __init__(self, namespace):
        self.namespace = namespace


def parse_only(script, argv, monkeypatch):
    """Run `script` as __main__ with `argv` until its parser has parsed them; return the namespace.
    An argument the parser refuses exits with status 2 (argparse's own message on stderr)."""
    real_parse_args = argparse.ArgumentParser.parse_args

    def parse_and_stop(parser, args=None, namespace=None):
        raise Parsed(real_parse_args(parser, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_and_stop)
    monkeypatch.setattr(sys, "argv", [script] + argv)
    with pytest.raises(Parsed) as parsed:
        runpy.run_path(os.path.join(REPO, script), run_name="__main__")
    return parsed.value.namespace


def test_the_pages_have_commands():
    assert len(PYTHON_COMMANDS) >= 10
    tools = {tokens[1] for _, tokens in PYTHON_COMMANDS}
    assert {"tools/train_net.py", "tools/query_table.py", "tools/plot_tradeoff.py", "demo/demo.py",
            "tools/freeze_width.py", "tools/profile_latency.py", "tools/study.py"} <= tools


@pytest.mark.parametrize("page,tokens", PYTHON_COMMANDS, ids=lambda v: " ".join(v)[:90] if isinstance(v, list) else v)
def test_python_command_parses_and_its_config_merges(page, tokens, monkeypatch):
    script, argv = tokens[1], tokens[2:]
    assert os.path.isfile(os.path.join(REPO, script)), f"{page}: {script} does not exist"
    args = parse_only(script, argv, monkeypatch)
    config_file = getattr(args, "config_file", None)
    if config_file:
        assert os.path.isfile(os.path.join(REPO, config_file)), f"{page}: config {config_file} does not exist"
        cfg = get_cfg()
        add_mutualnet_config(cfg)
        cfg.merge_from_file(os.path.join(REPO, config_file))
        cfg.merge_from_list(list(getattr(args, "opts", None) or []))
        validate_mutualnet_config(cfg)
    for token in argv:
        if "/" in token and not token.startswith(USER_PATH_PREFIXES) and not token.startswith("-"):
            path = os.path.join(REPO, token)
            assert os.path.exists(path) or os.path.isdir(os.path.dirname(path)), f"{page}: {token} is not in the repo"


@pytest.mark.parametrize("page,tokens", [c for c in ALL_COMMANDS if c[1][0] == "bash"], ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_shell_scripts_exist(page, tokens):
    assert os.path.isfile(os.path.join(REPO, tokens[1])), f"{page}: {tokens[1]} does not exist"


def test_readme_python_api_exists():
    text = open(os.path.join(REPO, "README.md")).read()
    names = {name for block in fenced_blocks(text, "python") for name in re.findall(r"mutualnet_det\.(\w+)", block)}
    assert names >= {"set_width", "using_width", "best_config", "AdaptivePredictor", "load_latency_table"}
    missing = sorted(name for name in names if not hasattr(mutualnet_det, name))
    assert not missing, f"README.md shows mutualnet_det.{missing}, which the package does not export"


def test_readme_results_table_is_the_study_of_record():
    """Each row of the README's results table equals benchmarks/study/results.json at scale 1.0
    (box / mask AP to one decimal, GFLOPs to two), for every method group of the study."""
    results = json.load(open(os.path.join(REPO, "benchmarks", "study", "results.json")))
    text = open(os.path.join(REPO, "README.md")).read()
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 9 and cells[0].startswith("[Converged-3375-Study]"):
            rows[cells[1]] = cells[2:]
    assert set(rows) == set(results)
    for group, records in results.items():
        expected = [str(records[0]["seeds"])]
        for width in (1.0, 0.25):
            (record,) = [r for r in records if r["width"] == width and r["resolution_scale"] == 1.0] or [None]
            expected += ["-"] * 3 if record is None else [
                f"{record['bbox']['AP']:.1f}", f"{record['segm']['AP']:.1f}", f"{record['gflops']:.2f}"]
        assert rows[group] == expected, group


def test_every_mutualnet_key_is_documented():
    """docs/configuration.md names every key of the MUTUALNET node (config.py adds them)."""
    from detectron2.config import CfgNode

    def leaves(node, prefix=""):
        for key, value in node.items():
            yield from leaves(value, f"{prefix}{key}.") if isinstance(value, CfgNode) else [f"{prefix}{key}"]

    cfg = get_cfg()
    add_mutualnet_config(cfg)
    keys = list(leaves(cfg.MUTUALNET))
    text = open(os.path.join(REPO, "docs", "configuration.md")).read()
    missing = [key for key in keys if f"`{key}`" not in text]
    assert len(keys) >= 19 and not missing, missing
