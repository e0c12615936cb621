"""How many of this process's cores other processes keep busy: the CPU contention a thread count
has to live with.

On a CPU, torch's intra-op threads wait for each other at the end of every parallel region, so a
process busy on one of the cores slows a model that spreads over all of them by much more than
one that leaves that core alone (on the 2-core study machine, with one core busy: 2.5-3x slower
at 2 threads, 1.0-1.4x at 1 thread). `AdaptivePredictor` reads `CpuContention` before each frame
to pick its thread count.

The measure, between two reads: busy time of the cores this process may run on (Linux /proc/stat,
per-CPU lines of the affinity set: user, nice, system, irq, softirq and steal jiffies) minus this
process's own CPU time (`time.process_time`, all its threads), divided by the wall time between
the reads -> cores kept busy by others (>= 0). Steal counts as busy: a hypervisor gave that time
to someone else. /proc/stat counts in clock ticks (usually 10 ms), so one frame's reading is
coarse; the predictor asks for the same choice on several consecutive frames before acting on it.
Not seen: CPU quotas of a container (cgroup cpu.max), which cap this process without a busy core.
"""
import os
import time
from typing import Callable, Dict, Iterable, Optional, Tuple

PROC_STAT = "/proc/stat"
# /proc/stat fields after the CPU name: user nice system idle iowait irq softirq steal (guest time
# is already inside user and nice); the ones that count as busy: all but idle and iowait
BUSY_FIELDS = (0, 1, 2, 5, 6, 7)


def usable_cpus() -> Tuple[int, ...]:
    """CPU numbers this process may run on (its affinity set; all CPUs where that is unknown)."""
    if hasattr(os, "sched_getaffinity"):
        return tuple(sorted(os.sched_getaffinity(0)))
    return tuple(range(os.cpu_count() or 1))


def busy_seconds(stat_text: str, cpus: Iterable[int], ticks_per_second: float) -> float:
    """Busy time (s) since boot of `cpus`, summed over their `cpuN` lines of /proc/stat text."""
    cpus = tuple(cpus)
    wanted = {f"cpu{number}" for number in cpus}
    lines = [line.split() for line in stat_text.splitlines()]
    found = [fields[1:] for fields in lines if fields and fields[0] in wanted]
    if len(found) != len(wanted):
        raise ValueError(f"/proc/stat has {len(found)} of the lines of CPUs {sorted(cpus)}")
    ticks = sum(int(values[field]) for values in found for field in BUSY_FIELDS if field < len(values))
    return ticks / ticks_per_second


class CpuContention:
    """`others_busy_cores()`: cores of this process's affinity set kept busy by other processes
    since the previous call (the first call: since construction).

    cores: how many CPUs this process may run on.
    stat_path, cpus, process_time, clock: injectable so tests can simulate the machine.
    """

    def __init__(self, stat_path: str = PROC_STAT, cpus: Iterable[int] = None,
                 process_time: Callable[[], float] = time.process_time, clock: Callable[[], float] = time.monotonic):
        self.stat_path = stat_path
        self.cpus = tuple(cpus) if cpus is not None else usable_cpus()
        self.cores = len(self.cpus)
        self.process_time, self.clock = process_time, clock
        self.ticks_per_second = os.sysconf("SC_CLK_TCK")
        self._previous = self._sample()

    @classmethod
    def on_this_system(cls) -> Optional["CpuContention"]:
        """A reader of this machine's /proc/stat, or None where it cannot be read (not Linux, or
        not the lines of this process's CPUs)."""
        try:
            return cls()
        except (OSError, ValueError, AttributeError):  # AttributeError: no os.sysconf
            return None

    def _sample(self) -> Dict[str, float]:
        with open(self.stat_path) as f:
            stat_text = f.read()
        return {"busy_s": busy_seconds(stat_text, self.cpus, self.ticks_per_second),
                "own_s": self.process_time(), "wall_s": self.clock()}

    def others_busy_cores(self) -> float:
        """Cores kept busy by other processes since the previous call, in [0, cores]."""
        sample = self._sample()
        previous, self._previous = self._previous, sample
        elapsed_s = sample["wall_s"] - previous["wall_s"]
        if elapsed_s <= 0:
            return 0.0
        others_s = (sample["busy_s"] - previous["busy_s"]) - (sample["own_s"] - previous["own_s"])
        return min(float(self.cores), max(0.0, others_s / elapsed_s))
