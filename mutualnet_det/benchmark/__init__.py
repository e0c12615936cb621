"""Cost measurements behind tools/benchmark.py: synchronised timing and report files (`timing`),
inference latency and GFLOPs per configuration (`inference`), training seconds per iteration and
peak memory, each in a fresh process (`training`), and the reports' Markdown (`reports`). Ratios,
not absolute numbers, are the point: each report is measured in one run on one machine."""
