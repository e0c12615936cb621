"""The budget policy and AdaptivePredictor, on simulated time (no real timing): convergence,
steadiness, recovery after a slowdown and return when it ends, switches from the BN stats bank;
the torch thread count chosen from other processes' load (simulated), and that load's measure."""
import itertools
import os

import numpy as np
import pytest
import torch
from helpers import tiny_cfg

from mutualnet_det.runtime import adaptive
from mutualnet_det.runtime.adaptive import (AdaptivePredictor, BudgetPolicy, FixedPolicy, ThreadChoice,
                                    thread_adaptation_off_because)
from mutualnet_det.runtime.contention import CpuContention
from mutualnet_det.bn_calibration import bn_layers
from mutualnet_det.engine.trainer import MutualNetTrainer
from mutualnet_det.runtime.stream import summarize_stream
from mutualnet_det.width import get_width

FRONT_MS = [20.0, 40.0, 60.0, 80.0, 100.0]
FRONT = [{"width": 0.25 + 0.1875 * i, "resolution_scale": 1.0, "latency_ms": ms, "bbox": {"AP": 10.0 + 5 * i}}
         for i, ms in enumerate(FRONT_MS)]
BUDGET = 75.0  # headroom 0.85: stepping up needs a prediction <= 63.75 ms
WINDOW, PATIENCE = 5, 10


def simulate(policy, loads, noise=0.0, seed=0):
    """Run the policy on a device whose time per frame is the table's x load (x uniform noise)."""
    rng = np.random.default_rng(seed)
    trace = []
    for load in loads:
        ms = policy.current["latency_ms"] * load * (1 + rng.uniform(-noise, noise))
        trace.append((policy.current["latency_ms"], ms))
        policy.observe(ms)
    return trace


def new_policy(budget=BUDGET):
    return BudgetPolicy(FRONT, budget, window=WINDOW, patience=PATIENCE, headroom=0.85)


def test_starts_at_the_best_configuration_under_the_budget_and_refuses_a_budget_below_the_cheapest():
    assert new_policy().current["latency_ms"] == 60.0
    assert new_policy(100).current["latency_ms"] == 100.0 and new_policy(39.9).current["latency_ms"] == 20.0
    with pytest.raises(ValueError, match=r"budget 19.0 ms is below the cheapest configuration \(width 0.25, scale 1.0: 20.000 ms\)"):
        new_policy(19.0)
    with pytest.raises(ValueError, match="positive number of milliseconds"):
        new_policy(-5)


# load -> configuration it settles on, by hand: the best with load x ms <= 75 reached from 60 ms;
# stepping up needs load x next ms <= 63.75
@pytest.mark.parametrize("load,expected_ms", [(0.5, 100.0), (1.0, 60.0), (1.3, 40.0), (2.0, 20.0), (3.0, 20.0)])
def test_converges_to_the_best_configuration_under_the_budget(load, expected_ms):
    trace = simulate(new_policy(), [load] * 60)
    assert trace[-1][0] == expected_ms
    assert {config for config, _ in trace[-20:]} == {expected_ms}


def test_hysteresis_band_keeps_one_step_below_a_configuration_that_would_just_fit():
    # at load 0.9, 80 ms runs in 72 ms (<= 75, fits) but is not predicted within 63.75: it stays at 60
    trace = simulate(new_policy(), [0.9] * 100)
    assert {config for config, _ in trace} == {60.0}


def test_when_even_the_cheapest_is_over_budget_it_stays_on_the_cheapest():
    trace = simulate(new_policy(), [5.0] * 40)
    assert trace[-1][0] == 20.0 and all(ms > BUDGET for _, ms in trace)


@pytest.mark.parametrize("load", [0.5, 0.7, 1.0, 1.5, 2.5])
def test_no_oscillation_at_a_steady_noisy_load(load):
    trace = simulate(new_policy(), [load] * 340, noise=0.05, seed=int(load * 10))
    switches = sum(a[0] != b[0] for a, b in zip(trace[40:], trace[41:]))
    assert switches == 0


def test_at_the_edge_of_the_budget_one_switch_and_no_way_back():
    # load 1.25: 60 ms runs at 75 +- 5%, around the budget; going down to 40 (50 ms) is final,
    # because stepping back up needs 60 x 1.25 = 75 <= 63.75
    trace = simulate(new_policy(), [1.25] * 300, noise=0.05, seed=3)
    switches = [(a[0], b[0]) for a, b in zip(trace, trace[1:]) if a[0] != b[0]]
    assert switches == [(60.0, 40.0)]


def test_recovers_within_the_stated_frames_after_a_slowdown_and_returns_when_it_ends():
    loads = [1.0] * 50 + [2.0] * 60 + [1.0] * 60
    trace = simulate(new_policy(), loads)
    assert all(ms <= BUDGET for _, ms in trace[:50])
    over = [i for i, (_, ms) in enumerate(trace) if ms > BUDGET]
    # at most window // 2 + 1 = 3 frames over the budget after the slowdown, then the policy jumps
    # straight to 20 ms (the best predicted within 75 ms at load 2: 40 ms) and stays under it
    assert over == [50, 51, 52]
    assert trace[53][0] == 20.0 and all(config == 20.0 for config, _ in trace[53:110])
    # load gone at frame 110: back at 60 ms in at most 2 steps x (patience + window // 2 + 1) = 26 frames,
    # never over the budget on the way
    back = next(i for i in range(110, len(trace)) if trace[i][0] == 60.0)
    assert back - 110 <= 2 * (PATIENCE + WINDOW // 2 + 1)
    assert [c for c, _ in trace[110:back + 1]] == sorted(c for c, _ in trace[110:back + 1])
    assert all(ms <= BUDGET for _, ms in trace[53:])


def test_room_must_be_consecutive_to_step_up():
    """Alternating loads 0.7 / 0.9 at 60 ms: with an odd window the median alternates too, so every
    other frame predicts 80 ms within 63.75 (0.7 x 80 = 56) and the others do not (0.9 x 80 = 72),
    while no frame is over the budget (54 ms). Room never lasts `patience` frames in a row: no step
    up (counting frames with room without resetting would step up after 2 x patience frames)."""
    trace = simulate(new_policy(), [0.7, 0.9] * 60)
    assert {config for config, _ in trace} == {60.0}
    # the same room on every frame does step up after patience frames (frames 2 .. 11 with room)
    assert simulate(new_policy(), [0.7] * 13)[-1][0] == 80.0


class SimulatedClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


# the predictor's front: (width, scale) -> simulated ms; the tiny model's input side is 64 px x scale
PREDICTOR_MS = {(0.25, 0.5): 20.0, (1.0, 0.5): 40.0, (1.0, 1.0): 60.0}
PREDICTOR_AP = {(0.25, 0.5): 12.0, (1.0, 0.5): 22.0, (1.0, 1.0): 30.0}
BANK_SWITCH_MS = 1.5  # simulated cost of setting a width and loading its banked BN statistics


def latency_table(configurations):
    front = [{"width": w, "resolution_scale": s, "latency_ms": PREDICTOR_MS[(w, s)], "gflops": 1.0,
              "bbox": {"AP": PREDICTOR_AP[(w, s)]}} for w, s in configurations]
    return {"device": "cpu", "setting": "backbone-only", "metric": ["bbox", "AP"], "configurations": front, "front": front}


@pytest.fixture(scope="module")
def simulated():
    """A tiny random-weight model with a recognisable bank entry per configuration, on a simulated
    clock that advances by load x the configuration's table time on each forward pass."""
    cfg = tiny_cfg(**{"MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.0, "TEST.DETECTIONS_PER_IMAGE": 4})
    torch.manual_seed(0)
    model = MutualNetTrainer.build_model(cfg).eval()
    bank_value = {}
    for number, configuration in enumerate(PREDICTOR_MS):
        for layer in bn_layers(model).values():
            layer.running_mean.fill_(number + 1)
        model.bn_stats_bank.store(model, *configuration)
        bank_value[configuration] = number + 1
    clock, state = SimulatedClock(), {"load": 1.0}

    def advance(module, args):
        scale = args[0][0]["image"].shape[-1] / 64
        clock.now += state["load"] * PREDICTOR_MS[(get_width(module), scale)] / 1000

    model.register_forward_pre_hook(advance)
    return cfg, model, clock, state, bank_value


def test_predictor_switches_from_the_bank_without_reloading_and_keeps_the_budget(simulated, monkeypatch):
    cfg, model, clock, state, bank_value = simulated
    apply_configuration = adaptive.apply_configuration

    def timed_apply_configuration(*args):  # a switch costs BANK_SWITCH_MS of simulated time
        clock.now += BANK_SWITCH_MS / 1000
        return apply_configuration(*args)

    monkeypatch.setattr(adaptive, "apply_configuration", timed_apply_configuration)
    predictor = AdaptivePredictor(cfg, model, latency_table(PREDICTOR_MS), 50.0, clock=clock)
    weights = {name: p.data_ptr() for name, p in model.named_parameters()}
    image = np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8)
    loads = [1.0] * 6 + [2.0] * 8
    for load in loads:
        state["load"] = load
        outputs = predictor(image)
        frame = predictor.last
        # the running configuration's width and banked statistics are loaded, outputs in image coordinates
        assert get_width(model) == frame.width
        assert all((layer.running_mean == bank_value[(frame.width, frame.resolution_scale)]).all()
                   for layer in bn_layers(model).values())
        assert outputs["instances"].image_size == (48, 80)
    frames = predictor.frames
    assert [(f.width, f.resolution_scale) for f in frames] == [(1.0, 0.5)] * 9 + [(0.25, 0.5)] * 5
    # frame 0 sets up the first configuration and frame 9 switches: both pay the switch
    assert [f.latency_ms for f in frames] == pytest.approx(
        [40.0 + BANK_SWITCH_MS] + [40.0] * 5 + [80.0] * 3 + [40.0 + BANK_SWITCH_MS] + [40.0] * 4)
    assert [f.within_budget for f in frames] == [True] * 6 + [False] * 3 + [True] * 5
    assert [f.switched for f in frames] == [False] * 9 + [True] + [False] * 4
    assert [f.switch_ms for f in frames] == pytest.approx([BANK_SWITCH_MS] + [0.0] * 8 + [BANK_SWITCH_MS] + [0.0] * 4)
    assert [f.metric_value for f in frames[8:10]] == [22.0, 12.0]
    assert weights == {name: p.data_ptr() for name, p in model.named_parameters()}  # nothing reloaded
    summary = summarize_stream(frames, 50.0, load_from_frame=6)
    assert summary["all"]["within_budget"] == pytest.approx(11 / 14)
    assert summary["with_load"]["within_budget"] == pytest.approx(5 / 8)
    assert summary["with_load"]["mean_metric"] == pytest.approx((3 * 22 + 5 * 12) / 8)
    assert summary["switches"] == 1 and summary["frames_with_load_before_first_within"] == 3
    assert summary["configurations_used"] == {"w1_s0.5": 9, "w0.25_s0.5": 5}


def test_fixed_policy_never_moves(simulated):
    cfg, model, clock, state, _ = simulated
    table = latency_table(PREDICTOR_MS)
    state["load"] = 3.0
    predictor = AdaptivePredictor(cfg, model, table, 50.0, clock=clock, policy=FixedPolicy(table["front"][-1]))
    for _ in range(4):
        predictor(np.zeros((64, 64, 3), dtype=np.uint8))
    assert {(f.width, f.resolution_scale, f.within_budget) for f in predictor.frames} == {(1.0, 1.0, False)}
    assert [f.latency_ms for f in predictor.frames] == pytest.approx([180.0] * 4)


def test_predictor_gives_an_rgb_model_rgb_channels(simulated):
    """The predictor takes BGR images (as DefaultPredictor); a model trained with INPUT.FORMAT RGB
    must receive R, G, B in that order: a BGR image with B=200, G=100, R=10 arrives as 10, 100, 200."""
    cfg, model, clock, _, _ = simulated
    image_bgr = np.empty((48, 80, 3), dtype=np.uint8)
    image_bgr[:] = (200, 100, 10)
    seen = {}
    for input_format, expected in (("RGB", [10.0, 100.0, 200.0]), ("BGR", [200.0, 100.0, 10.0])):
        format_cfg = cfg.clone()
        format_cfg.INPUT.FORMAT = input_format
        predictor = AdaptivePredictor(format_cfg, model, latency_table(PREDICTOR_MS), 50.0, clock=clock)
        handle = model.register_forward_pre_hook(lambda module, args: seen.__setitem__("image", args[0][0]["image"]))
        try:
            predictor(image_bgr)
        finally:
            handle.remove()
        assert seen["image"].flatten(1).mean(1).tolist() == expected, input_format


def test_predictor_refuses_unbanked_configurations_and_another_setting(simulated):
    cfg, model, clock, _, _ = simulated
    table = latency_table(PREDICTOR_MS)
    table["front"] = table["front"] + [{"width": 0.5, "resolution_scale": 1.0, "latency_ms": 90.0, "bbox": {"AP": 35.0}}]
    with pytest.raises(ValueError, match=r"no banked BN statistics for width 0.5, scale 1 in this checkpoint"):
        AdaptivePredictor(cfg, model, table, 50.0, clock=clock)
    with pytest.raises(ValueError, match="measured with a backbone\\+roi_heads slimmable model, this model is backbone-only"):
        AdaptivePredictor(cfg, model, dict(latency_table(PREDICTOR_MS), setting="backbone+roi_heads"), 50.0, clock=clock)
    with pytest.raises(ValueError, match="below the cheapest configuration"):
        AdaptivePredictor(cfg, model, latency_table(PREDICTOR_MS), 10.0, clock=clock)


def test_demo_runs_a_video_under_a_budget_and_logs_each_frame(tmp_path):
    import csv
    import json
    import os
    import subprocess
    import sys

    import cv2
    from detectron2.checkpoint import DetectionCheckpointer
    from helpers import REPO, SHAPES_CONFIG

    cfg = tiny_cfg()
    torch.manual_seed(0)
    model = MutualNetTrainer.build_model(cfg)
    for configuration in PREDICTOR_MS:
        model.bn_stats_bank.store(model, *configuration)
    DetectionCheckpointer(model, str(tmp_path)).save("model")
    (tmp_path / "latency_table.json").write_text(json.dumps(latency_table(PREDICTOR_MS)))
    config = tmp_path / "tiny.yaml"
    config.write_text(f"""_BASE_: "{SHAPES_CONFIG}"
MODEL: {{RESNETS: {{STEM_OUT_CHANNELS: 16}}, FPN: {{OUT_CHANNELS: 32}}, ROI_BOX_HEAD: {{FC_DIM: 32}},
        ROI_MASK_HEAD: {{CONV_DIM: 16, NUM_CONV: 1}}, RPN: {{POST_NMS_TOPK_TEST: 20}}}}
INPUT: {{MIN_SIZE_TEST: 64, MAX_SIZE_TEST: 64}}
""")
    writer = cv2.VideoWriter(str(tmp_path / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 48))
    for value in (40, 120, 200):
        writer.write(np.full((48, 64, 3), value, dtype=np.uint8))
    writer.release()
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "demo", "demo.py"), "--config-file", str(config), "--input",
         str(tmp_path / "clip.avi"), "--latency-budget", "100000", "--latency-table", str(tmp_path / "latency_table.json"),
         "--output", str(tmp_path / "out"), "--opts", "MODEL.WEIGHTS", str(tmp_path / "model.pth")],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "out" / "adaptive_frames.csv")))
    # a budget no configuration reaches: the best of the front, (1.0, 1.0), on every frame
    assert [(r["frame"], r["width"], r["resolution_scale"], r["within_budget"]) for r in rows] == \
        [(str(i), "1.0", "1.0", "1") for i in range(3)]
    assert "frame 2: width 1, scale 1" in result.stdout + result.stderr
    video = cv2.VideoCapture(str(tmp_path / "out" / "clip_adaptive.mp4"))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 3


# --- thread counts: choosing from other processes' load, and the predictor following it ---

def test_thread_choice_fits_the_free_cores_and_waits_for_agreeing_frames():
    two_cores = ThreadChoice([2, 1], cores=2, current=2, frames_to_change=3)
    # others' busy cores rounded half up; at least one core for us
    assert [two_cores.fitting(busy) for busy in (0.0, 0.4, 0.5, 1.0, 1.7, 2.0)] == [2, 2, 1, 1, 1, 1]
    four_cores = ThreadChoice([1, 2, 4], cores=4, current=4)
    assert [four_cores.fitting(busy) for busy in (0.0, 0.6, 1.0, 2.0, 2.5, 4.0)] == [4, 2, 2, 2, 1, 1]
    assert ThreadChoice([2, 4], cores=4, current=4).fitting(3.0) == 2  # none fits one core: the fewest profiled
    # a change needs 3 consecutive readings choosing the same other count; a reading choosing the
    # running count (or another one) starts the count again
    readings = [1.0, 1.0, 0.0, 1.0, 1.0, 1.2, 1.0, 0.9]
    assert [two_cores.observe(busy) for busy in readings] == [False, False, False, False, False, True, False, False]
    assert two_cores.current == 1
    with pytest.raises(ValueError, match="frames_to_change >= 1"):
        ThreadChoice([1, 2], cores=2, current=2, frames_to_change=0)


def test_budget_policy_moves_to_another_front_with_its_parameters():
    policy = BudgetPolicy(FRONT, BUDGET, window=3, patience=4, headroom=0.9)
    slower = [dict(r, latency_ms=r["latency_ms"] * 1.5) for r in FRONT]  # 30, 60, 90, 120, 150 ms
    moved = policy.with_front(slower)
    assert moved.current["latency_ms"] == 60.0  # the best under 75 ms at the table's times
    assert (moved.budget_ms, moved.window, moved.patience, moved.headroom) == (BUDGET, 3, 4, 0.9)
    # even the cheapest over the budget: starts there instead of refusing
    assert policy.with_front([dict(r, latency_ms=r["latency_ms"] + 60) for r in FRONT]).current["latency_ms"] == 80.0


def test_cpu_contention_counts_the_busy_time_of_other_processes_on_our_cpus(tmp_path):
    ticks = os.sysconf("SC_CLK_TCK")
    stat = tmp_path / "stat"

    def write(cpu0, cpu1, cpu2):  # user nice system idle iowait irq softirq steal guest guest_nice
        stat.write_text("cpu  0 0 0 0 0 0 0 0 0 0\n" + "".join(
            f"cpu{n} {' '.join(map(str, fields))} 0 0\n" for n, fields in enumerate((cpu0, cpu1, cpu2))) + "intr 5 0\n")

    process_s, wall_s = [10.0], [100.0]
    write((100, 0, 50, 1000, 5, 0, 0, 0), (200, 0, 50, 1000, 5, 0, 0, 0), (0, 0, 0, 0, 0, 0, 0, 0))
    contention = CpuContention(str(stat), cpus=[0, 1], process_time=lambda: process_s[0], clock=lambda: wall_s[0])
    assert contention.cores == 2
    # one second later: cpu0 +1.0 s busy (user, nice, system, irq, softirq, steal), cpu1 +0.5 s user,
    # idle and iowait up, cpu2 (not ours) fully busy; this process used 0.4 s of CPU
    write((100 + ticks // 2, ticks // 10, 50 + ticks // 10, 1500, 50, ticks // 10, ticks // 10, ticks // 10),
          (200 + ticks // 2, 0, 50, 1500, 5, 0, 0, 0), (ticks, 0, 0, 0, 0, 0, 0, 0))
    process_s[0], wall_s[0] = 10.4, 101.0
    expected = (ticks // 2 + 5 * (ticks // 10) + ticks // 2) / ticks - 0.4
    assert contention.others_busy_cores() == pytest.approx(expected)
    # this process busier than the CPUs' count (tick rounding): no one else, not a negative count
    process_s[0], wall_s[0] = 12.0, 102.0
    assert contention.others_busy_cores() == 0.0
    assert contention.others_busy_cores() == 0.0  # no time elapsed
    with pytest.raises(ValueError, match="has 2 of the lines of CPUs"):
        CpuContention(str(stat), cpus=[0, 1, 3])
    # this machine: a reader exists (Linux) and reads a count within its cores
    here = CpuContention.on_this_system()
    assert here is not None and here.cores == len(os.sched_getaffinity(0))
    assert 0.0 <= here.others_busy_cores() <= here.cores


# idle times (ms) of the thread-aware front at 2 and at 1 torch thread(s)
THREAD_MS = {2: {(0.25, 0.5): 20.0, (1.0, 0.5): 40.0, (1.0, 1.0): 60.0},
             1: {(0.25, 0.5): 24.0, (1.0, 0.5): 45.0, (1.0, 1.0): 75.0}}
CONTENDED_2_THREADS = 2.5  # another process busy on one of the 2 cores: 2 threads 2.5x slower, 1 thread not slowed
THREAD_SWITCH_MS = 2.0  # simulated cost of torch.set_num_threads
THREAD_BUDGET = 50.0


def thread_table():
    fronts = {str(threads): [{"width": w, "resolution_scale": s, "threads": threads, "latency_ms": ms, "gflops": 1.0,
                              "bbox": {"AP": PREDICTOR_AP[(w, s)]}} for (w, s), ms in THREAD_MS[threads].items()]
              for threads in (1, 2)}
    return {"device": "cpu", "setting": "backbone-only", "metric": ["bbox", "AP"], "torch_threads": 2,
            "configurations": fronts["1"] + fronts["2"], "front": fronts["2"], "fronts_by_threads": fronts}


class SimulatedContention:
    """Other processes' busy cores as the test sets them, on 2 cores."""
    cores = 2

    def __init__(self):
        self.busy = 0.0

    def others_busy_cores(self):
        return self.busy


@pytest.fixture
def threaded(monkeypatch):
    """A tiny model on a simulated clock that advances, per forward pass, by the table time of the
    configuration at torch's current thread count, x 2.5 at 2 threads while another process is
    busy; torch.set_num_threads advances it by THREAD_SWITCH_MS. torch's thread count restored after."""
    cfg = tiny_cfg(**{"MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.0, "TEST.DETECTIONS_PER_IMAGE": 4})
    torch.manual_seed(0)
    model = MutualNetTrainer.build_model(cfg).eval()
    for configuration in THREAD_MS[2]:
        model.bn_stats_bank.store(model, *configuration)
    clock, state = SimulatedClock(), {"contended": False, "threads_seen": []}

    def advance(module, args):
        threads, scale = torch.get_num_threads(), args[0][0]["image"].shape[-1] / 64
        slowdown = CONTENDED_2_THREADS if state["contended"] and threads == 2 else 1.0
        clock.now += THREAD_MS[threads][(get_width(module), scale)] * slowdown / 1000
        state["threads_seen"].append(threads)

    model.register_forward_pre_hook(advance)
    set_num_threads = torch.set_num_threads

    def timed_set_num_threads(count):
        clock.now += THREAD_SWITCH_MS / 1000
        set_num_threads(count)

    threads_before = torch.get_num_threads()
    set_num_threads(2)
    monkeypatch.setattr(torch, "set_num_threads", timed_set_num_threads)
    yield cfg, model, clock, state
    set_num_threads(threads_before)


def test_predictor_moves_to_one_thread_under_contention_and_back_when_it_ends(threaded):
    cfg, model, clock, state = threaded
    contention = SimulatedContention()
    predictor = AdaptivePredictor(cfg, model, thread_table(), THREAD_BUDGET, clock=clock, contention=contention,
                                  thread_change_frames=3)
    image = np.zeros((48, 80, 3), dtype=np.uint8)
    # another process on one core from frame 10 to 59; its readings are noisy: single readings
    # below 0.5 (choosing 2 threads again) never 3 in a row
    noisy = itertools.cycle([1.0, 0.8, 0.3, 1.3, 1.1, 0.45, 0.9, 1.0])
    readings = [0.0] * 10 + [1.0] * 3 + [next(noisy) for _ in range(47)] + [0.0] * 40
    for index, busy in enumerate(readings):
        contention.busy, state["contended"] = busy, 10 <= index < 60
        predictor(image)
        assert torch.get_num_threads() == predictor.last.threads
    frames = predictor.frames
    assert state["threads_seen"] == [f.threads for f in frames]  # each forward pass ran at the frame's count
    assert [f.threads for f in frames] == [2] * 12 + [1] * 50 + [2] * 38
    # at 2 threads the policy starts at width 1.0 / scale 0.5 (40 ms); the load makes it 100 ms for
    # the k - 1 = 2 frames before the third reading agrees (fewer than the window needs to move
    # down); at 1 thread the new policy starts at the best under 50 ms, width 1.0 / scale 0.5 (45 ms),
    # and stays: the next one (75 ms) is never predicted within 0.85 x 50 ms
    assert {(f.width, f.resolution_scale) for f in frames} == {(1.0, 0.5)}
    assert [i for i, f in enumerate(frames) if not f.within_budget] == [10, 11]
    assert [f.latency_ms for f in frames[9:14]] == pytest.approx([40.0, 100.0, 100.0, 45.0 + THREAD_SWITCH_MS, 45.0])
    assert [i for i, f in enumerate(frames) if f.switched] == [12, 62]
    # the switch cost includes the thread change
    assert [frames[i].switch_ms for i in (12, 62)] == pytest.approx([THREAD_SWITCH_MS] * 2)
    assert frames[62].latency_ms == pytest.approx(40.0 + THREAD_SWITCH_MS)
    summary = summarize_stream(frames, THREAD_BUDGET, load_from_frame=10)
    assert summary["threads_used"] == {1: 50, 2: 50}
    assert summary["configurations_used"] == {"w1_s0.5_t2": 50, "w1_s0.5_t1": 50}
    assert summary["with_load"]["within_budget"] == pytest.approx(88 / 90)


def test_without_a_contention_reader_or_on_a_fixed_policy_threads_stay_as_the_records_say(threaded, monkeypatch):
    cfg, model, clock, state = threaded
    monkeypatch.setattr(CpuContention, "on_this_system", staticmethod(lambda: None))
    table = thread_table()
    no_reader = AdaptivePredictor(cfg, model, table, THREAD_BUDGET, clock=clock)
    one_thread = next(r for r in table["configurations"] if r["threads"] == 1 and r["width"] == 1.0
                      and r["resolution_scale"] == 1.0)
    fixed = AdaptivePredictor(cfg, model, table, THREAD_BUDGET, clock=clock, contention=SimulatedContention(),
                              policy=FixedPolicy(one_thread))
    assert no_reader.thread_choice is None and fixed.thread_choice is None
    state["contended"] = True
    image = np.zeros((48, 80, 3), dtype=np.uint8)
    for _ in range(3):
        no_reader(image)
    assert [f.threads for f in no_reader.frames] == [2, 2, 2]  # the front at the largest count, as profiled
    fixed(image)
    assert fixed.last.threads == 1 and torch.get_num_threads() == 1
    policy = BudgetPolicy(table["front"], THREAD_BUDGET)
    assert "runs on cuda" in thread_adaptation_off_because(torch.device("cuda"), policy, SimulatedContention())
    assert "FixedPolicy does not move" in thread_adaptation_off_because(torch.device("cpu"), FixedPolicy(one_thread),
                                                                       SimulatedContention())
    assert "no readable /proc/stat" in thread_adaptation_off_because(torch.device("cpu"), policy, None)
    assert thread_adaptation_off_because(torch.device("cpu"), policy, SimulatedContention()) == ""


@pytest.mark.parametrize("window,patience,headroom", [(0, 10, 0.85), (5, 0, 0.85), (5, 10, 0.0), (5, 10, 1.1)])
def test_budget_policy_parameters_refused_naming_them(window, patience, headroom):
    with pytest.raises(ValueError, match=rf"^need window >= 1, patience >= 1 and 0 < headroom <= 1 "
                                         rf"\(got {window}, {patience}, {headroom}\)$"):
        BudgetPolicy(FRONT, BUDGET, window=window, patience=patience, headroom=headroom)
    with pytest.raises(ValueError, match=r"^latency budget must be a positive number of milliseconds, got 0$"):
        BudgetPolicy(FRONT, 0)


def test_budget_policy_edges_of_its_parameters_and_defaults():
    """window 1, patience 1 and headroom 1 are allowed; the defaults are window 5, patience 10,
    headroom 0.85 and box AP; the front is ordered by milliseconds whatever order it comes in."""
    edge = BudgetPolicy(list(reversed(FRONT)), BUDGET, window=1, patience=1, headroom=1.0)
    assert [r["latency_ms"] for r in edge.front] == FRONT_MS and edge.current["latency_ms"] == 60.0
    assert edge.min_samples == 1 and edge.observe(60.0 * 75 / 80)  # 80 ms predicted at exactly 75: one frame of room
    assert edge.current["latency_ms"] == 80.0
    default = BudgetPolicy(FRONT, BUDGET)
    assert (default.window, default.patience, default.headroom, default.metric) == (5, 10, 0.85, ("bbox", "AP"))
    assert default.budget_ms == 75.0 and isinstance(default.budget_ms, float)


def test_budget_policy_waits_for_half_a_window_and_measures_the_load_as_a_median():
    """window 4: a decision needs 4 // 2 + 1 = 3 frames at the configuration; the load is the
    median of the recent frames over the configuration's table time; after a move the frames
    measured at the old configuration are forgotten."""
    policy = BudgetPolicy(FRONT, BUDGET, window=4, patience=10, headroom=0.85)
    assert policy.min_samples == 3
    assert not policy.observe(300.0) and not policy.observe(300.0)  # 5 x the table's 60 ms, twice: wait
    assert policy.load() == 5.0
    assert policy.observe(30.0)  # median 300 ms > 75 and nothing predicted within 75 ms at load 5: the cheapest
    assert policy.current["latency_ms"] == 20.0 and len(policy.recent) == 0 and policy.frames_with_room == 0
    for ms in (20.0, 30.0, 40.0, 10.0):
        policy.observe(ms)
    assert policy.load() == 25.0 / 20.0  # median of the last 4 (window) frames: (20 + 30) / 2
    cheapest = BudgetPolicy(FRONT, BUDGET, window=1, start=FRONT[0])
    assert not cheapest.observe(1000.0) and cheapest.current is FRONT[0]  # the cheapest: nowhere to go


def test_budget_policy_start_and_metric():
    """An explicit start record is where it starts; the metric chooses the start under the budget."""
    assert BudgetPolicy(FRONT, BUDGET, start=FRONT[1]).current is FRONT[1]
    by_small = [dict(r, bbox={"AP": r["bbox"]["AP"], "APs": 50.0 - r["bbox"]["AP"]}) for r in FRONT]
    policy = BudgetPolicy(by_small, BUDGET, metric=("bbox", "APs"))
    assert policy.current["latency_ms"] == 20.0  # the best APs under 75 ms is the cheapest
    assert policy.with_front(by_small).current["latency_ms"] == 20.0  # the metric goes along


def test_budget_policy_decisions_at_their_edges():
    """By hand, window 1 unless said: a budget under 1 ms is a budget; a median exactly at the budget
    is not over it; a configuration predicted exactly at the budget fits; from the second
    configuration down is a move; a frame without a move says so."""
    assert BudgetPolicy(FRONT, 0.5, start=FRONT[0]).budget_ms == 0.5
    steady = simulate(new_policy(), [1.25] * 30)  # 60 ms runs in exactly 75 ms
    assert {config for config, _ in steady} == {60.0}
    at_80 = BudgetPolicy(FRONT, BUDGET, window=1, start=FRONT[3])
    assert at_80.observe(100.0) and at_80.current["latency_ms"] == 60.0  # load 1.25: 60 x 1.25 = 75 fits
    second = BudgetPolicy(FRONT, BUDGET, window=1, start=FRONT[1])
    assert second.observe(120.0) and second.current is FRONT[0]  # load 3: only 20 ms (60) fits
    policy = new_policy()
    assert not any(policy.observe(60.0) for _ in range(30))  # load 1 at 60 ms: no room, no move


def test_step_up_comes_exactly_patience_frames_after_room_begins():
    """Window 5, patience 10: 20 frames without room (load 0.9), then load 0.7. The median turns
    at the third 0.7 frame (index 22), the first with room; the tenth frame with room (31) moves,
    so frame 32 is the first at 80 ms."""
    trace = simulate(new_policy(), [0.9] * 20 + [0.7] * 15)
    assert [config for config, _ in trace[:32]] == [60.0] * 32 and trace[32][0] == 80.0
    # room from the first decision (frame 2, after window // 2 + 1 = 3 frames): the tenth is frame 11
    trace = simulate(new_policy(), [0.7] * 13)
    assert [config for config, _ in trace[:12]] == [60.0] * 12 and trace[12][0] == 80.0


def test_a_front_record_exactly_at_the_budget_fits_and_the_metric_goes_along_twice():
    policy = BudgetPolicy(FRONT, BUDGET, metric=("bbox", "APs"), start=FRONT[0])
    by_small = [dict(r, bbox={"AP": r["bbox"]["AP"], "APs": r["bbox"]["AP"]}) for r in FRONT]
    at_budget = [dict(r, latency_ms=ms) for r, ms in zip(by_small, (20.0, 40.0, 75.0, 80.0, 100.0))]
    moved = policy.with_front(at_budget)
    assert moved.current["latency_ms"] == 75.0 and moved.metric == ("bbox", "APs")
    assert moved.with_front(by_small).metric == ("bbox", "APs")
