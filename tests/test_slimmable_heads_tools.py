"""MUTUALNET.SLIMMABLE_HEADS through the tools: demo panels, the study plan, the benchmark report."""
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from helpers import tiny_cfg

from mutualnet_det.benchmark.reports import heads_markdown
from mutualnet_det.engine.trainer import MutualNetTrainer
from mutualnet_det.study.runner import study_plan
from mutualnet_det.evaluation.visualization import SlimmablePredictor, render_comparison


def test_demo_renders_a_slimmable_heads_model_at_two_widths():
    cfg = tiny_cfg(**{"MUTUALNET.SLIMMABLE_HEADS": True, "MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.0,
                      "TEST.DETECTIONS_PER_IMAGE": 5, "MUTUALNET.BN_CALIB.NUM_BATCHES": 1})
    torch.manual_seed(0)
    batches = lambda *_: iter(MutualNetTrainer.build_train_loader(cfg))  # noqa: E731
    predictor = SlimmablePredictor(cfg, MutualNetTrainer.build_model(cfg), "MutualNet, slim heads", batches)
    image = read_image(DatasetCatalog.get("shapes_val")[0]["file_name"], format="BGR")
    _, rows = render_comparison(image, [predictor], [1.0, 0.25], 1.0, MetadataCatalog.get("shapes_val"), 0.0)
    assert len(rows) == 2
    # at width 0.25 the FPN outputs are narrowed too: 32 -> 8 channels
    features = predictor.model.backbone(torch.zeros(1, 3, 64, 64))
    assert {f.shape[1] for f in features.values()} == {8}


def test_study_plan_adds_two_seeded_slimmable_heads_runs_only_when_asked():
    plain, with_heads = study_plan(), study_plan(slimmable_heads=True)
    added = [run for run in with_heads if run not in plain]
    assert [(run.name, run.seed) for run in added] == [("mutualnet_slimheads_seed1", 1), ("mutualnet_slimheads_seed2", 2)]
    assert all(dict(zip(run.overrides[::2], run.overrides[1::2])) == {"MUTUALNET.TRAIN.METHOD": "mutualnet",
                                                                      "MUTUALNET.SLIMMABLE_HEADS": "True"} for run in added)


def test_benchmark_report_states_ratios_against_the_targets():
    def row(heads, width, gflops, ms):
        return {"slimmable_heads": heads, "width": width, "gflops": gflops, "gflops_backbone": gflops / 2,
                "detections": 50, "latency": {"median_ms": ms, "iqr_ms": 1.0, "min_ms": ms / 2}}

    report = {"date": "2000-01-01", "device_name": "test", "config": "configs/x.yaml",
              "inference": [row(False, 1.0, 8.0, 100.0), row(False, 0.25, 5.0, 70.0),
                            row(True, 1.0, 8.0, 100.0), row(True, 0.25, 1.0, 35.0)],
              "training": {"single": {"seconds_per_iter": 1.0, "peak_memory_mb": 1},
                           "mutualnet_slimmable_heads": {"seconds_per_iter": 2.0, "peak_memory_mb": 1},
                           "mutualnet_backbone_only": {"seconds_per_iter": 3.0, "peak_memory_mb": 1}}}
    text = heads_markdown(report)
    assert "- full heads (paper): GFLOPs 0.625; latency 0.700 (min: 0.700)" in text  # 5 / 8, 70 / 100
    assert "- slimmable heads: GFLOPs 0.125 (target <= 0.20: met); latency 0.350 (target <= 0.30: not met) (min: 0.350)" in text
    assert "single-width iteration: 2.00 (target <= 2.2: met)" in text
    assert "MutualNet backbone-only / single-width iteration: 3.00" in text
