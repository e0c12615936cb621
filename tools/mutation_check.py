#!/usr/bin/env python
"""Mutation testing of the core modules, each against its own test files (not part of CI).

    bash tools/mutation_check.sh                  # every module in MODULES, about an hour on 2 cores
    bash tools/mutation_check.sh cohort rescale   # some of them (names from MODULES)

Why: a test earns its place by failing when the code is wrong. mutmut (PyPI, 3.x) makes small
wrong changes (mutants: an operator, a constant, a dropped argument) to one module at a time and
runs the tests of that module that call the changed function, one mutant after another. A mutant
none of them notices (a survivor) is either equivalent to the original (listed in
tools/mutation_equivalents.json with the reason, and left out of the score) or a gap in the tests.

The work happens in a copy of the working tree under a temporary folder, because mutmut rewrites
the sources it mutates; the working tree itself is never changed. Writes
benchmarks/results/mutation_<date>.{json,md}: per module the mutants, killed, timed out,
survived (each with its diff) and excluded as equivalent (each with its reason).
"""
import argparse
import ast
import datetime
import fnmatch
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EQUIVALENTS_FILE = os.path.join("tools", "mutation_equivalents.json")

# name, source file, which of its mutants (a glob on mutmut's mutant name; None = the whole file), test files.
MODULES = [
    ("width", "mutualnet_det/width.py", None,
     ["tests/test_width.py"]),
    ("slimmable_ops", "mutualnet_det/modeling/slimmable_ops.py", None,
     ["tests/modeling/test_slimmable_ops.py", "tests/modeling/test_backbone.py", "tests/modeling/test_heads.py",
      "tests/test_width.py"]),
    ("bn_calibration", "mutualnet_det/bn_calibration.py", None,
     ["tests/test_bn_calibration.py"]),
    ("sandwich_trainer", "mutualnet_det/engine/sandwich_trainer.py", None,
     ["tests/engine/test_sandwich_step.py", "tests/engine/test_mixed_precision.py"]),
    ("cohort", "mutualnet_det/engine/cohort.py", None,
     ["tests/engine/test_cohort.py"]),
    ("rescale", "mutualnet_det/data/rescale.py", None,
     ["tests/data/test_rescale.py"]),
    ("heads", "mutualnet_det/modeling/heads.py", None,
     ["tests/modeling/test_heads.py"]),
    # Only the budget policy: the predictor and the thread choice around it are timing code.
    ("adaptive.BudgetPolicy", "mutualnet_det/runtime/adaptive.py", "*.xǁBudgetPolicyǁ*",
     ["tests/runtime/test_adaptive.py"]),
    ("width_sweep", "mutualnet_det/evaluation/width_sweep.py", None,
     ["tests/evaluation/test_width_sweep.py"]),
    ("query_table", "mutualnet_det/evaluation/query_table.py", None,
     ["tests/evaluation/test_query_table.py",
      "tests/evaluation/test_width_sweep.py::test_pareto_front_and_budget_queries_on_a_hand_made_sweep",
      "tests/runtime/test_latency.py::test_front_and_budget_queries_in_milliseconds",
      "tests/runtime/test_latency.py::test_budget_query_errors"]),
]
TIMEOUT_MULTIPLIER = 3  # mutmut's default 15 lets one looping mutant of a 15 s test cost 8 minutes
TARGET_PER_MODULE = 0.85
TARGET_OVERALL = 0.90

# mutmut leaves decorated functions alone (it cannot put its dispatching trampoline under an
# arbitrary decorator). These decorators are moved below the function in the copy
# ("f = torch.no_grad()(f)", the same function object at run time) so that the function is mutated too.
LIFTED_DECORATORS = ("torch.no_grad()", "contextlib.contextmanager", "property")

# mutmut's verdicts grouped the way the report counts them. A timeout is a detected mutant: the
# tests ran 30 times longer than on the original code. "segfault" is mutmut's label for a worker
# killed by a signal (a crash, or the hard limit after a timeout).
DETECTED = {"killed": "killed", "caught by type check": "killed", "segfault": "killed", "timeout": "timeout"}


def lift_decorators(source: str) -> str:
    """The source with LIFTED_DECORATORS on module- and class-level functions written as assignments after them."""
    tree = ast.parse(source)
    functions = []
    for node in tree.body:
        body = node.body if isinstance(node, ast.ClassDef) else [node]
        functions += [f for f in body if isinstance(f, ast.FunctionDef) and f.decorator_list
                      and all(ast.unparse(d) in LIFTED_DECORATORS for d in f.decorator_list)]
    lines = source.splitlines(keepends=True)
    for function in sorted(functions, key=lambda f: f.lineno, reverse=True):
        indent = " " * function.col_offset
        # decorators apply bottom-up: the one nearest the def is applied first
        assignments = [f"{indent}{function.name} = {ast.unparse(d)}({function.name})\n"
                       for d in reversed(function.decorator_list)]
        lines[function.end_lineno:function.end_lineno] = assignments
        first, last = function.decorator_list[0].lineno, function.decorator_list[-1].end_lineno
        del lines[first - 1:last]
    return "".join(lines)


def copy_working_tree(destination: str) -> None:
    """Copy the files git tracks or would track (uncommitted edits included) to destination."""
    listed = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=REPO_ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for path in filter(None, listed):
        if os.path.isfile(os.path.join(REPO_ROOT, path)):
            os.makedirs(os.path.join(destination, os.path.dirname(path)), exist_ok=True)
            shutil.copy2(os.path.join(REPO_ROOT, path), os.path.join(destination, path))


def function_of(mutant: str) -> str:
    """'pkg.mod.xǁBudgetPolicyǁobserve__mutmut_3' -> 'BudgetPolicy.observe'; 'pkg.mod.x_f__mutmut_1' -> 'f'."""
    mangled = mutant.rpartition(".")[2].rpartition("__mutmut_")[0]
    if mangled.startswith("xǁ"):
        return ".".join(mangled[2:].split("ǁ"))
    return mangled[2:]


def changed_lines(diff: str):
    """The removed and the added lines of a unified diff, stripped and with spaces collapsed."""
    def clean(line):
        return re.sub(r"\s+", " ", line[1:]).strip()
    body = [line for line in diff.splitlines() if not line.startswith(("---", "+++"))]
    return ("\n".join(clean(x) for x in body if x.startswith("-")),
            "\n".join(clean(x) for x in body if x.startswith("+")))


def equivalence_reason(equivalents, module_name, function, before, after):
    for entry in equivalents:
        if (entry["module"], entry["function"], entry["before"], entry["after"]) == (module_name, function, before, after):
            entry["used"] = True
            return entry["reason"]
    return None


def run_module(work, module, equivalents, log_path, timeout_s):
    """Run mutmut on one module in the copy `work`; the module's counts, survivors and equivalents."""
    name, source, mutant_glob, tests = module
    with open(os.path.join(REPO_ROOT, source)) as f:
        original = f.read()
    with open(os.path.join(work, source), "w") as f:
        f.write(lift_decorators(original))
    # mutmut runs the tests inside work/mutants: the tests also need the configs, tools, ... beside them
    also_copy = sorted(set(os.listdir(work)) - {"mutualnet_det", "tests", "mutants", "setup.cfg"})
    with open(os.path.join(work, "setup.cfg"), "w") as f:
        f.write("[mutmut]\nsource_paths = mutualnet_det\n"
                f"only_mutate = {source}\n"
                "also_copy =\n" + "".join(f"    {path}\n" for path in also_copy) +
                "pytest_add_cli_args_test_selection =\n" + "".join(f"    {t}\n" for t in tests) +
                "pytest_add_cli_args = -p no:cacheprovider -W ignore::DeprecationWarning -W ignore::FutureWarning\n"
                # a mutant is timed out after 2 x TIMEOUT_MULTIPLIER x (its tests' time + 1 s) of CPU
                f"timeout_multiplier = {TIMEOUT_MULTIPLIER}\n")
    shutil.rmtree(os.path.join(work, "mutants"), ignore_errors=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=work)
    command = [sys.executable, "-m", "mutmut", "run", "--max-children", "1"] + ([mutant_glob] if mutant_glob else [])
    start = time.time()
    with open(log_path, "w") as log:
        try:
            returncode = subprocess.run(command, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            returncode = "timeout"
    wall_s = time.time() - start
    meta_path = os.path.join(work, "mutants", source + ".meta")
    if returncode != 0 or not os.path.exists(meta_path):
        raise RuntimeError(f"mutmut did not finish on {source} (exit {returncode}); see {log_path}")
    with open(meta_path) as f:
        exit_code_by_mutant = json.load(f)["exit_code_by_key"]
    from mutmut.stats import status_by_exit_code
    counts = dict(mutants=0, killed=0, timed_out=0, survived=0, equivalent=0)
    survivors, excluded = [], []
    for mutant, exit_code in sorted(exit_code_by_mutant.items(), key=lambda kv: natural_key(kv[0])):
        if mutant_glob and not fnmatch.fnmatch(mutant, mutant_glob):
            continue
        counts["mutants"] += 1
        status = status_by_exit_code[exit_code]
        if DETECTED.get(status) == "killed":
            counts["killed"] += 1
            continue
        if status == "timeout":
            counts["timed_out"] += 1
            continue
        diff = subprocess.run([sys.executable, "-m", "mutmut", "show", mutant], cwd=work, env=env,
                              capture_output=True, text=True).stdout
        diff = "\n".join(line for line in diff.splitlines()[1:] if line.startswith(("-", "+")) and
                         not line.startswith(("---", "+++")))
        before, after = changed_lines(diff)
        record = dict(mutant=mutant, function=function_of(mutant), status=status, before=before, after=after)
        reason = equivalence_reason(equivalents, name, record["function"], before, after)
        if reason:
            counts["equivalent"] += 1
            excluded.append(dict(record, reason=reason))
        else:
            counts["survived"] += 1
            survivors.append(record)
    scored = counts["mutants"] - counts["equivalent"]
    detected = counts["killed"] + counts["timed_out"]
    return dict(name=name, source=source, mutants_selected=mutant_glob or "all", tests=tests, **counts,
                score=detected / scored if scored else 1.0, wall_s=round(wall_s, 1),
                mutmut_exit=returncode, survivors=survivors, excluded_as_equivalent=excluded)


def natural_key(mutant):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", mutant)]


def machine():
    cpu = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    import mutmut
    import torch
    return dict(cpu=cpu, cores=os.cpu_count(), system=platform.platform(), python=platform.python_version(),
                torch=torch.__version__, mutmut=getattr(mutmut, "__version__", "?"))


def overall_of(modules):
    total = {k: sum(m[k] for m in modules) for k in ("mutants", "killed", "timed_out", "survived", "equivalent")}
    scored = total["mutants"] - total["equivalent"]
    total["score"] = (total["killed"] + total["timed_out"]) / scored if scored else 1.0
    return total


def format_report(report) -> str:
    def pct(x):
        return f"{100 * x:.1f}%"

    lines = [f"# Mutation testing, {report['date']}", "",
             f"Command: `{report['command']}` (from the repository root; {report['machine']['mutmut_note']}).",
             f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, Python "
             f"{report['machine']['python']}, torch {report['machine']['torch']}, mutmut {report['machine']['mutmut']}; "
             f"one mutmut worker, OMP_NUM_THREADS=1. Wall time {report['wall_s'] / 60:.1f} min.", "",
             "Each module is mutated alone and each mutant runs the tests, among the module's own test files below, "
             "that call the mutated function (mutmut's per-function test selection). Score = (killed + timed out) / "
             "(mutants - excluded as equivalent); a mutant no selected test reaches counts as survived. "
             f"Targets: at least {pct(TARGET_PER_MODULE)} in every module, {pct(TARGET_OVERALL)} overall.", "",
             "| module | mutants | killed | timed out | survived | equivalent | score | test files |",
             "|---|---|---|---|---|---|---|---|"]
    for m in report["modules"]:
        scope = "" if m["mutants_selected"] == "all" else f" (`{m['mutants_selected']}`)"
        mark = "" if m["score"] >= TARGET_PER_MODULE else " (below target)"
        lines.append(f"| `{m['source']}`{scope} | {m['mutants']} | {m['killed']} | {m['timed_out']} | {m['survived']} | "
                     f"{m['equivalent']} | {pct(m['score'])}{mark} | " + ", ".join(f"`{t}`" for t in m["tests"]) + " |")
    o = report["overall"]
    lines += [f"| **overall** | {o['mutants']} | {o['killed']} | {o['timed_out']} | {o['survived']} | {o['equivalent']} | "
              f"**{pct(o['score'])}** | |", "",
              "What is not mutated: module-level statements (constants, imports) and decorators themselves; "
              f"functions under `{'`, `'.join(LIFTED_DECORATORS)}` are mutated after the decorator is moved "
              "below the function in the copy (`f = torch.no_grad()(f)`, the same object at run time); "
              "functions under other decorators are not mutated.", ""]
    for m in report["modules"]:
        if not (m["survivors"] or m["excluded_as_equivalent"]):
            continue
        lines += [f"## {m['name']} (`{m['source']}`)", ""]
        if m["survivors"]:
            lines += ["Survivors (gaps the tests do not catch):", ""]
            lines += [f"- `{s['mutant'].rpartition('.')[2]}` ({s['status']}) in `{s['function']}`: "
                      f"`{s['before']}` -> `{s['after']}`" for s in m["survivors"]]
            lines.append("")
        if m["excluded_as_equivalent"]:
            lines += ["Excluded as equivalent:", ""]
            lines += [f"- `{s['mutant'].rpartition('.')[2]}` in `{s['function']}`: `{s['before']}` -> `{s['after']}`: "
                      f"{s['reason']}" for s in m["excluded_as_equivalent"]]
            lines.append("")
    return "\n".join(line.replace("\n", " / ") if line.startswith("- ") else line for line in lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help="module names from MODULES (default: all)")
    parser.add_argument("--output-dir", default=os.path.join(REPO_ROOT, "benchmarks", "results"))
    parser.add_argument("--work-dir", help="where to copy the tree (default: a new temporary folder, removed after)")
    parser.add_argument("--timeout-per-module", type=float, default=1800, help="seconds")
    args = parser.parse_args()
    known = [m[0] for m in MODULES]
    unknown = [n for n in args.modules if n not in known]
    if unknown:
        parser.error(f"unknown module(s) {unknown}; accepted: {', '.join(known)}")
    chosen = [m for m in MODULES if not args.modules or m[0] in args.modules]
    with open(os.path.join(REPO_ROOT, EQUIVALENTS_FILE)) as f:
        equivalents = json.load(f)

    work = args.work_dir or tempfile.mkdtemp(prefix="mutation_check_")
    start = time.time()
    try:
        copy_working_tree(work)
        results = []
        for module in chosen:
            log_path = os.path.join(work, f"mutmut_{module[0]}.log")
            print(f"{module[0]}: mutating {module[1]} against {' '.join(module[3])}", flush=True)
            result = run_module(work, module, equivalents, log_path, args.timeout_per_module)
            print(f"    {result['mutants']} mutants, {result['killed']} killed, {result['timed_out']} timed out, "
                  f"{result['survived']} survived, {result['equivalent']} equivalent: {100 * result['score']:.1f}% "
                  f"in {result['wall_s']:.0f} s", flush=True)
            results.append(result)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)

    report = dict(date=datetime.date.today().isoformat(),
                  command="bash tools/mutation_check.sh" + "".join(f" {n}" for n in args.modules),
                  machine=dict(machine(), mutmut_note="mutmut installed with `pip install mutmut==3.8.1`"),
                  wall_s=round(time.time() - start, 1), targets=dict(per_module=TARGET_PER_MODULE, overall=TARGET_OVERALL),
                  modules=results, overall=overall_of(results))
    unused = [e for e in equivalents if not e.pop("used", False) and e["module"] in {m[0] for m in chosen}]
    for entry in unused:
        print(f"note: equivalent entry matched no survivor (killed now, or the code changed): {entry}")
    os.makedirs(args.output_dir, exist_ok=True)
    stem = os.path.join(args.output_dir, f"mutation_{report['date']}")
    with open(stem + ".json", "w") as f:
        json.dump(report, f, indent=1, ensure_ascii=False)
    with open(stem + ".md", "w") as f:
        f.write(format_report(report))
    o = report["overall"]
    print(f"overall: {o['mutants']} mutants, {100 * o['score']:.1f}% detected; wrote {stem}.md and .json")
    below = [m["name"] for m in results if m["score"] < TARGET_PER_MODULE]
    return 1 if below or o["score"] < TARGET_OVERALL else 0


if __name__ == "__main__":
    sys.exit(main())
