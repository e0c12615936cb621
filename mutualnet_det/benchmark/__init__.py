"""Cost measurements: synchronised timing and report files (`timing`). Ratios, not absolute
numbers, are the point: each report is measured in one run on one machine."""
