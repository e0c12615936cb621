"""SyncBN calibration in two processes (gloo) through Detectron2's launch.

Usage: python syncbn_worker.py OUTPUT_DIR. Each rank calibrates a conv + SyncBN model on its own
batches (rank-dependent sizes and distributions) at widths 1.0 and 0.5 and writes rank<r>.pt with
the banked statistics and the BN inputs it saw; the test recomputes the global statistics. Each
rank also runs one training-mode forward and backward of SyncBN on a channel slice (float32 and
bfloat16) and records its output, gradients, the tensors autograd saved and the host reads.
"""
import os
import sys

# gloo on the CPU on every machine: Detectron2's launch picks NCCL (and wants one GPU per process)
# whenever CUDA is visible, so it is hidden from these processes before torch is imported.
os.environ["CUDA_VISIBLE_DEVICES"] = ""

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mutualnet_det  # noqa: E402,F401
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from detectron2.engine import launch  # noqa: E402
from helpers import HostReads  # noqa: E402
from detectron2.utils import comm  # noqa: E402

from mutualnet_det.bn_calibration import BNStatsBank, calibrate_bn  # noqa: E402
from mutualnet_det.modeling.slimmable_ops import SlimmableBatchNorm2d, SlimmableConv2d, SlimmableSyncBatchNorm  # noqa: E402

NUM_BATCHES = 4


class ConvSyncBN(nn.Module):
    def __init__(self, norm=SlimmableSyncBatchNorm):
        super().__init__()
        self.conv = SlimmableConv2d(3, 16, kernel_size=3, padding=1, bias=False, norm=norm(16))
        self.width_range = (0.25, 1.0)
        self.bn_stats_bank = BNStatsBank()

    def forward(self, batched_inputs):
        return self.conv(torch.stack([x["image"] for x in batched_inputs]))


def rank_batches(rank):
    """Rank 0: batches of 2 images; rank 1: batches of 3, another mean and spread per batch."""
    generator = torch.Generator().manual_seed(100 + rank)
    size = 2 + rank
    return [[{"image": torch.randn(3, 12, 12, generator=generator) * (1 + rank + b) + 5 * rank - b}
             for _ in range(size)] for b in range(NUM_BATCHES)]


def training_step(rank, dtype):
    """SyncBN (16 channels, run on the first 8) in training on this rank's input: output, input and
    parameter gradients for a fixed random upstream gradient, running statistics, host reads and
    (dtype, size) of every tensor autograd saved for backward."""
    generator = torch.Generator().manual_seed(200 + rank)
    x = (torch.randn(2 + rank, 8, 5, 6, generator=generator) * (2 + rank) + rank).to(dtype).requires_grad_()
    upstream = torch.randn(x.shape, generator=generator).to(dtype)
    torch.manual_seed(1)
    norm = SlimmableSyncBatchNorm(16, momentum=0.1).train()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    saved = []
    reads = HostReads()
    with reads:
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append((t.dtype, t.numel())) or t, lambda t: t):
            output = norm(x)
        (output.float() * upstream.float()).sum().backward()
    return {"x": x.detach(), "upstream": upstream, "output": output.detach(), "grad_x": x.grad,
            "grad_weight": norm.weight.grad, "grad_bias": norm.bias.grad, "weight": norm.weight.detach(),
            "bias": norm.bias.detach(), "running_mean": norm.running_mean, "running_var": norm.running_var,
            "host_reads": reads.count, "saved": saved}


def main(output_dir):
    torch.manual_seed(0)  # the same weights on both ranks
    model = ConvSyncBN()
    rank = comm.get_rank()
    batches = rank_batches(rank)
    saved = {"world_size": comm.get_world_size()}
    for width in (1.0, 0.5):
        calibrate_bn(model, iter(batches), width, 1.0, NUM_BATCHES)
        channels = model.conv.out_rule.at(width)
        with torch.no_grad():
            bn_inputs = [F.conv2d(torch.stack([x["image"] for x in batch]), model.conv.weight[:channels], padding=1)
                         for batch in batches]
        entry = model.bn_stats_bank.bank[f"w{width:.4f}_s1.0000".replace(".", "p")]
        saved[width] = {"mean": entry["conv.norm.running_mean"][:channels],
                        "var": entry["conv.norm.running_var"][:channels], "bn_inputs": bn_inputs}
    # plain BN: each rank calibrates on its own batches, then every rank banks the mean over ranks
    plain = ConvSyncBN(norm=SlimmableBatchNorm2d)
    plain.load_state_dict(model.state_dict(), strict=False)
    calibrate_bn(plain, iter(batches), 1.0, 1.0, NUM_BATCHES)
    entry = plain.bn_stats_bank.bank["w1p0000_s1p0000"]
    saved["plain"] = {"mean": entry["conv.norm.running_mean"], "var": entry["conv.norm.running_var"]}
    # under bfloat16 autocast: statistics still in float32, the output in the input's dtype
    norm = model.conv.norm
    norm.reset_running_stats()
    norm.momentum = None
    bf16_input = saved[1.0]["bn_inputs"][0].to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = norm(bf16_input)
    saved["amp"] = {"output_dtype": output.dtype, "bn_input": bf16_input.float(),
                    "mean": norm.running_mean.clone(), "var": norm.running_var.clone()}
    saved["step"] = {dtype: training_step(rank, dtype) for dtype in (torch.float32, torch.bfloat16)}
    torch.save(saved, os.path.join(output_dir, f"rank{rank}.pt"))
    # both ranks done, then an explicit gloo teardown rather than one left to interpreter exit: the
    # test failed 2 times in about 45 (loaded machine) with one rank dying of "terminate called
    # without an active exception" (SIGABRT); where in the rank it died was not seen
    comm.synchronize()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    launch(main, 2, dist_url="auto", args=(sys.argv[1],))
