"""An exact resume: a run killed with SIGKILL twice (once inside a training step, once half-way
through writing a checkpoint) and resumed each time ends with the state of a run that was never
interrupted. Compared: the final checkpoint's model weights and buffers, the AdamW moments and
step counts, the LR scheduler and the iteration. What makes it hold: batches fixed by the
iteration (image order and augmentation seeds, data/resumable_loader.py), the step's own draws
seeded by iteration, cohorts keyed by iteration, checkpoints written atomically, and resume
falling back past a missing or truncated checkpoint."""
import os
import subprocess
import sys

import torch

WORKER = os.path.join(os.path.dirname(__file__), "resume_worker.py")
MAX_ITER = 7


def train(output_dir, *flags):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, WORKER, str(output_dir), str(MAX_ITER), *flags],
                          capture_output=True, text=True, env=env, timeout=600)


def flat(state, prefix=""):
    """Every tensor and number in a checkpoint, by path."""
    if isinstance(state, dict):
        return {k: v for key, value in state.items() for k, v in flat(value, f"{prefix}{key}/").items()}
    if isinstance(state, (list, tuple)):
        return {k: v for i, value in enumerate(state) for k, v in flat(value, f"{prefix}{i}/").items()}
    if isinstance(state, (torch.Tensor, int, float)):
        return {prefix.rstrip("/"): torch.as_tensor(state, dtype=torch.float64)}
    return {}


def test_killed_twice_and_resumed_equals_uninterrupted(tmp_path):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    done = train(straight)
    assert done.returncode == 0, done.stderr[-3000:]

    killed = train(broken, "--kill-in-step", "3")  # checkpoints so far: iteration 1
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert (broken / "last_checkpoint").read_text() == "model_0000001.pth"
    killed = train(broken, "--resume", "--kill-in-save", "5")  # resumes at 2; dies writing iteration 5
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert (broken / "last_checkpoint").read_text() == "model_0000003.pth"
    assert not (broken / "model_0000005.pth").exists()
    assert [f for f in os.listdir(broken) if f.endswith(".tmp")]  # the unfinished write's temporary file
    finished = train(broken, "--resume")  # resumes at 4
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert not [f for f in os.listdir(broken) if f.endswith(".tmp")]  # removed at resume

    expected = torch.load(straight / "model_final.pth", weights_only=False)
    resumed = torch.load(broken / "model_final.pth", weights_only=False)
    expected_values, resumed_values = flat({k: expected[k] for k in ("model", "trainer", "iteration")}), \
        flat({k: resumed[k] for k in ("model", "trainer", "iteration")})
    assert expected_values.keys() == resumed_values.keys()
    assert any("exp_avg" in k for k in expected_values)  # the optimizer's moments are compared
    assert expected["iteration"] == MAX_ITER - 1
    differences = {k: float((expected_values[k] - resumed_values[k]).abs().max()) for k in expected_values}
    worst = max(differences, key=differences.get)
    assert differences[worst] <= 1e-6, (worst, differences[worst])
    # and the comparison is not vacuous: training moved the weights
    start = torch.load(broken / "model_0000001.pth", weights_only=False)["model"]
    assert max(float((start[k].double() - expected["model"][k].double()).abs().max())
               for k in start if start[k].is_floating_point()) > 1e-3
