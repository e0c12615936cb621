"""The training-cost measurement: its config (file, then overrides) and one real measurement of a
tiny config in a fresh process (python -m mutualnet_det.benchmark.training)."""
import pytest
from helpers import SHAPES_CONFIG, tiny_cfg

from mutualnet_det.benchmark.training import benchmark_overrides, load_cfg, training_benchmark


def test_load_cfg_adds_the_mutualnet_node_then_the_file_then_the_overrides_in_order(tmp_path):
    config = tmp_path / "leaf.yaml"
    config.write_text(f'_BASE_: "{SHAPES_CONFIG}"\nSOLVER: {{BASE_LR: 0.5, MAX_ITER: 7}}\n'
                      "MUTUALNET: {TRAIN: {METHOD: usnet}}\n")
    cfg = load_cfg(str(config), ["SOLVER.BASE_LR", "0.25", "MUTUALNET.CPU_ROI_ALIGN", "torchvision",
                                 "SOLVER.BASE_LR", 0.125])
    assert cfg.SOLVER.BASE_LR == 0.125  # the last override wins over the earlier one and the file
    assert cfg.SOLVER.MAX_ITER == 7 and cfg.MUTUALNET.TRAIN.METHOD == "usnet"  # from the file
    assert cfg.MUTUALNET.CPU_ROI_ALIGN == "torchvision"
    assert cfg.DATASETS.TEST == ("shapes_val",)  # from the file's _BASE_
    assert not cfg.is_frozen()  # the benchmarks change keys after loading


def test_measurement_overrides_come_before_the_callers_so_the_caller_wins():
    overrides = benchmark_overrides("usnet", "cpu", ["DATALOADER.NUM_WORKERS", 2])
    pairs = list(zip(overrides[::2], overrides[1::2]))
    assert pairs[:2] == [("MUTUALNET.TRAIN.METHOD", "usnet"), ("MODEL.DEVICE", "cpu")]
    assert pairs[-1] == ("DATALOADER.NUM_WORKERS", 2)
    assert dict(pairs)["OUTPUT_DIR"].endswith("mutualnet_benchmark_usnet")


def test_one_iteration_of_a_tiny_config_in_a_fresh_process_and_its_failure(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(tiny_cfg().dump())
    result = training_benchmark(str(config), "single", 1, "cpu", ["MUTUALNET.CPU_ROI_ALIGN", "torchvision"])
    assert set(result) == {"seconds_per_iter", "peak_memory_mb"}
    assert 0 < result["seconds_per_iter"] < 60
    assert result["peak_memory_mb"] > 100  # a process that imported torch and trained: its own peak, in MB
    # the child's error reaches the caller: an override the config validation refuses
    with pytest.raises(RuntimeError, match="MUTUALNET.CPU_ROI_ALIGN='bogus' is unknown"):
        training_benchmark(str(config), "single", 1, "cpu", ["MUTUALNET.CPU_ROI_ALIGN", "bogus"])
