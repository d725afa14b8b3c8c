"""The orders a plan search ranks by (``--objective``): one home, light enough for the CLI parser.

``serve`` (the default) is what a practitioner picks: the fewest GPUs that serve the workload with
the safety margin free (planner.search.Margin), then lossless before 8-bit before lower
bit-widths (planner.search.quality_class), then decode throughput. ``quality``: lossless formats first, then by published (or measured) loss. ``gpus``:
fewest GPUs. ``cost``: dollars per million generated tokens. ``throughput``: decode tokens/s.
``latency``: prefill plus the workload's decode steps. Each is followed by the quality order;
speeds compare to 4 significant digits, so a tie goes to fewer GPUs, never to rounding noise.
"""

OBJECTIVES = ("serve", "quality", "gpus", "cost", "throughput", "latency")
DEFAULT_OBJECTIVE = "serve"
