#!/usr/bin/env python
"""Mutation testing of the core modules, each against its own test files (not part of CI).

    bash tools/mutation_check.sh                  # every module in MODULES, about an hour on 2 cores
    bash tools/mutation_check.sh cohort rescale   # some of them (names from MODULES)
    bash tools/mutation_check.sh heads --update   # re-run one module, keep the other rows of today's report

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

# name, source file, which of its mutants (a glob on mutmut's mutant name; None = the whole file), test files
# (and pytest arguments), and a note for the report when the module is not mutated or tested whole.
MODULES = [
    ("width", "mutualnet_det/width.py", None,
     ["tests/test_width.py"]),
    ("slimmable_ops", "mutualnet_det/modeling/slimmable_ops.py", None,
     ["tests/modeling/test_slimmable_ops.py", "tests/modeling/test_backbone.py", "tests/modeling/test_heads.py",
      "tests/test_width.py",
      # the slowest ones, which add no layer case: FLOPs, and the ResNet-50 repeats of cases
      "--deselect=tests/modeling/test_backbone.py::test_flops_fall_monotonically_with_width",
      "--deselect=tests/modeling/test_backbone.py::test_width_w_equals_plain_reduced_network[50-0.3]",
      "--deselect=tests/modeling/test_heads.py::test_width_w_is_detectron2_mask_rcnn_with_reduced_channels[50]"],
     "three slow tests left out for time: the FLOPs test, and two ResNet-50 repeats of cases the other tests cover"),
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
     ["tests/runtime/test_adaptive.py::" + name for name in (
         "test_starts_at_the_best_configuration_under_the_budget_and_refuses_a_budget_below_the_cheapest",
         "test_converges_to_the_best_configuration_under_the_budget",
         "test_hysteresis_band_keeps_one_step_below_a_configuration_that_would_just_fit",
         "test_when_even_the_cheapest_is_over_budget_it_stays_on_the_cheapest",
         "test_no_oscillation_at_a_steady_noisy_load", "test_at_the_edge_of_the_budget_one_switch_and_no_way_back",
         "test_recovers_within_the_stated_frames_after_a_slowdown_and_returns_when_it_ends",
         "test_room_must_be_consecutive_to_step_up", "test_budget_policy_moves_to_another_front_with_its_parameters",
         "test_budget_policy_parameters_refused_naming_them", "test_budget_policy_edges_of_its_parameters_and_defaults",
         "test_budget_policy_waits_for_half_a_window_and_measures_the_load_as_a_median",
         "test_budget_policy_start_and_metric", "test_budget_policy_decisions_at_their_edges",
         "test_step_up_comes_exactly_patience_frames_after_room_begins",
         "test_a_front_record_exactly_at_the_budget_fits_and_the_metric_goes_along_twice")],
     "only BudgetPolicy is mutated, against its own tests (the predictor around it is timing code)"),
    # The whole sweep runs on two images here (8 s); the 60-image sweep (15 s a mutant) and the
    # command-line test (a subprocess, which mutmut cannot follow) are left out.
    ("width_sweep", "mutualnet_det/evaluation/width_sweep.py", None,
     ["tests/evaluation/test_width_sweep.py",
      "--deselect=tests/evaluation/test_width_sweep.py::test_sweep_visits_each_configuration_once_and_costs_fall",
      "--deselect=tests/evaluation/test_width_sweep.py::test_eval_only_cli_stops_before_any_evaluation_on_missing_weights"],
     "the sweep runs on two images; the 60-image sweep (15 s a mutant) and the command-line test are left out"),
    ("query_table", "mutualnet_det/evaluation/query_table.py", None,
     ["tests/evaluation/test_query_table.py",
      "tests/evaluation/test_width_sweep.py::test_pareto_front_and_budget_queries_on_a_hand_made_sweep",
      "tests/runtime/test_latency.py::test_front_and_budget_queries_in_milliseconds",
      "tests/runtime/test_latency.py::test_budget_query_errors"],
     "from test_width_sweep.py and test_latency.py only their query-table tests"),
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


def surviving_mutants(work, source, mutant_glob):
    """Names of the mutants of `source` that mutmut has not found detected (yet) in `work`."""
    from mutmut.stats import status_by_exit_code

    with open(os.path.join(work, "mutants", source + ".meta")) as f:
        exit_code_by_mutant = json.load(f)["exit_code_by_key"]
    return [mutant for mutant, exit_code in exit_code_by_mutant.items()
            if status_by_exit_code[exit_code] not in DETECTED and (not mutant_glob or fnmatch.fnmatch(mutant, mutant_glob))]


def run_module(work, module, equivalents, log_path, timeout_s, previous=None):
    """Run mutmut on one module in the copy `work`; the module's counts, survivors and equivalents.

    previous: the work folder of an earlier run of this module, when tests were added since: only
    its survivors run again, on the current tree (what was killed stays killed: tests were only
    added). Refused when the module's source changed since, which changes its mutants."""
    name, source, mutant_glob, tests = module[:4]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=work)
    start = time.time()
    names = []
    if previous:
        with open(os.path.join(REPO_ROOT, source)) as f, open(os.path.join(previous, source)) as g:
            if lift_decorators(f.read()) != g.read():
                raise RuntimeError(f"{source} changed since the run in {previous}: run the module whole")
        names = surviving_mutants(previous, source, mutant_glob)
        if not names:  # nothing to run again: the earlier run stands as it is
            return dict(collect_module(previous, module, equivalents, env, read_number(previous, f"wall_{name}"), 0),
                        nothing_rerun=True)
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
    command = [sys.executable, "-m", "mutmut", "run", "--max-children", "1"] + (names or ([mutant_glob] if mutant_glob else []))
    with open(log_path, "w") as log:
        try:
            returncode = subprocess.run(command, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            returncode = "timeout"
    wall_s = time.time() - start
    if returncode != 0 or not os.path.exists(os.path.join(work, "mutants", source + ".meta")):
        raise RuntimeError(f"mutmut did not finish on {source} (exit {returncode}); see {log_path}")
    if previous:  # the earlier verdicts, with the survivors' new ones
        meta_path = os.path.join(work, "mutants", source + ".meta")
        with open(meta_path) as f:
            meta = json.load(f)
        with open(os.path.join(previous, "mutants", source + ".meta")) as f:
            verdicts = json.load(f)["exit_code_by_key"]
        verdicts.update({mutant: meta["exit_code_by_key"][mutant] for mutant in names})
        meta["exit_code_by_key"] = verdicts
        with open(meta_path, "w") as f:
            json.dump(meta, f)
        wall_s += read_number(previous, f"wall_{name}")
    with open(os.path.join(work, f"mutation_wall_{name}.txt"), "w") as f:
        f.write(str(wall_s))
    return collect_module(work, module, equivalents, env, wall_s, returncode)


def read_number(work, what):
    with open(os.path.join(work, f"mutation_{what}.txt")) as f:
        return float(f.read())


def collect_module(work, module, equivalents, env, wall_s, returncode):
    """The module's counts, its survivors with their diffs and its mutants excluded as equivalent."""
    name, source, mutant_glob, tests = module[:4]
    with open(os.path.join(work, "mutants", source + ".meta")) as f:
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
    return dict(name=name, source=source, mutants_selected=mutant_glob or "all", tests=tests,
                note=module[4] if len(module) > 4 else "", **counts,
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
             "Commands, from the repository root (mutmut from PyPI: "
             f"`.venv/bin/pip install mutmut=={report['machine']['mutmut']}`; `--update` replaces the rows of "
             "the modules named and keeps the others):", "",
             *[f"- `{c}`" for c in report["commands"]], "",
             f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, Python "
             f"{report['machine']['python']}, torch {report['machine']['torch']}, mutmut {report['machine']['mutmut']}; "
             f"one mutmut worker, OMP_NUM_THREADS=1. Wall time {report['wall_s'] / 60:.1f} min "
             "(the sum of the modules' runs).", "",
             *(["How: each module was run whole (`bash tools/mutation_check.sh MODULE --work-dir DIR`); where tests "
                "were added after that run, its survivors were run again on the newer tree with `--resume DIR` "
                "(the tree column names both trees); killed mutants stay killed when tests are only added.", ""]
               if any("re-run" in m["commit"] for m in report["modules"]) else []),
             "Each module is mutated alone and each mutant runs the tests, among the module's own test files below, "
             "that call the mutated function (mutmut's per-function test selection). Score = (killed + timed out) / "
             "(mutants - excluded as equivalent); a mutant no selected test reaches counts as survived. "
             f"Targets: at least {pct(TARGET_PER_MODULE)} in every module, {pct(TARGET_OVERALL)} overall.", "",
             "| module | mutants | killed | timed out | survived | equivalent | score | minutes | test files |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m in report["modules"]:
        scope = "" if m["mutants_selected"] == "all" else f" (`{m['mutants_selected']}`)"
        mark = "" if m["score"] >= TARGET_PER_MODULE else " (below target)"
        lines.append(f"| `{m['source']}`{scope} | {m['mutants']} | {m['killed']} | {m['timed_out']} | {m['survived']} | "
                     f"{m['equivalent']} | {pct(m['score'])}{mark} | {m['wall_s'] / 60:.1f} | "
                     + ", ".join(f"`{t}`" for t in m["tests"]) + f" (tree `{m['commit']}`) |")
    o = report["overall"]
    lines += [f"| **overall** | {o['mutants']} | {o['killed']} | {o['timed_out']} | {o['survived']} | {o['equivalent']} | "
              f"**{pct(o['score'])}** | {report['wall_s'] / 60:.1f} | |", "",
              "What is not mutated: module-level statements (constants, imports) and decorators themselves; "
              f"functions under `{'`, `'.join(LIFTED_DECORATORS)}` are mutated after the decorator is moved "
              "below the function in the copy (`f = torch.no_grad()(f)`, the same object at run time); "
              "functions under other decorators are not mutated.", ""]
    lines += [f"- `{m['source']}`: {m['note']}." for m in report["modules"] if m["note"]]
    lines.append("")
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
    parser.add_argument("--resume", metavar="WORK_DIR",
                        help="the --work-dir of an earlier run of the module(s): re-run only its survivors "
                             "on the current tree (after tests were added)")
    parser.add_argument("--update", action="store_true",
                        help="replace these modules' rows in today's report and keep the others (after new tests)")
    args = parser.parse_args()
    known = [m[0] for m in MODULES]
    unknown = [n for n in args.modules if n not in known]
    if unknown:
        parser.error(f"unknown module(s) {unknown}; accepted: {', '.join(known)}")

    chosen = [m for m in MODULES if not args.modules or m[0] in args.modules]
    with open(os.path.join(REPO_ROOT, EQUIVALENTS_FILE)) as f:
        equivalents = json.load(f)

    work = args.work_dir or tempfile.mkdtemp(prefix="mutation_check_")
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO_ROOT,
                            capture_output=True, text=True).stdout.strip()
    try:
        copy_working_tree(work)
        results = []
        for module in chosen:
            log_path = os.path.join(work, f"mutmut_{module[0]}.log")
            print(f"{module[0]}: mutating {module[1]} against {' '.join(module[3])}", flush=True)
            result = run_module(work, module, equivalents, log_path, args.timeout_per_module, args.resume)
            result["commit"] = commit
            if args.resume:  # the survivors were re-run on this tree; the rest was decided on that one
                with open(os.path.join(args.resume, "mutation_commit.txt")) as f:
                    earlier = f.read().strip()
                result["commit"] = earlier if result.pop("nothing_rerun", False) else f"{earlier}, survivors re-run on {commit}"
            with open(os.path.join(work, "mutation_commit.txt"), "w") as f:
                f.write(result["commit"])
            print(f"    {result['mutants']} mutants, {result['killed']} killed, {result['timed_out']} timed out, "
                  f"{result['survived']} survived, {result['equivalent']} equivalent: {100 * result['score']:.1f}% "
                  f"in {result['wall_s']:.0f} s", flush=True)
            results.append(result)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)

    date = datetime.date.today().isoformat()
    stem = os.path.join(args.output_dir, f"mutation_{date}")
    commands = ["bash tools/mutation_check.sh" + "".join(f" {n}" for n in args.modules)
                + (" --resume WORK_DIR" if args.resume else "") + (" --update" if args.update else "")]
    if args.update and os.path.exists(stem + ".json"):
        with open(stem + ".json") as f:
            earlier = json.load(f)
        rerun = {r["name"] for r in results}
        results = [r for r in earlier["modules"] if r["name"] not in rerun] + results
        commands = earlier["commands"] + commands
    results.sort(key=lambda r: known.index(r["name"]))
    report = dict(date=date, commands=commands, machine=machine(),
                  wall_s=round(sum(r["wall_s"] for r in results), 1),
                  targets=dict(per_module=TARGET_PER_MODULE, overall=TARGET_OVERALL),
                  modules=results, overall=overall_of(results))
    unused = [e for e in equivalents if not e.pop("used", False) and e["module"] in {m[0] for m in chosen}]
    for entry in unused:
        print(f"note: equivalent entry matched no survivor (killed now, or the code changed): {entry}")
    os.makedirs(args.output_dir, exist_ok=True)
    with open(stem + ".json", "w") as f:
        json.dump(report, f, indent=1, ensure_ascii=False)
    with open(stem + ".md", "w") as f:
        f.write(format_report(report))
    o = report["overall"]
    print(f"overall: {o['mutants']} mutants, {100 * o['score']:.1f}% detected; wrote {stem}.md and .json")
    below = [m["name"] for m in report["modules"] if m["score"] < TARGET_PER_MODULE]
    return 1 if below or o["score"] < TARGET_OVERALL else 0


if __name__ == "__main__":
    sys.exit(main())
