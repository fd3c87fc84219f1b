"""Pass-by-pass report: what each pass of the pipeline buys, measured on one model.

Takes a model and example inputs (or a MODEL spec for the CLI); traces once with torch.export,
runs the pipeline one pass at a time, plans every stage and measures it: compile time, node and
kernel counts, estimated FLOPs and bytes, steady-state latency, the leave-one-out latency delta,
numerical error vs eager and the (estimated) arena peak. Gives a JSON dict and writes
report.json / report.md / report.html plus two matplotlib plots (see README, "Pass-by-pass report").

Also the compression analyses: `sensitivity_scan` / `propose_plan` (sensitivity.py: per-layer
quantization error and a verified mixed-precision QuantScheme) and `compression_report`
(compression.py: size / accuracy / CPU latency of variants), and `parallel_report` (parallel.py:
per-rank graphs and communication volume of a tensor- or pipeline-parallel compile), exported as
`kiln.<name>` too.
"""

from .build import pass_report
from .compression import compression_report
from .parallel import parallel_report
from .render import write_report
from .sensitivity import propose_plan, sensitivity_scan
from .target import load_target

__all__ = ["compression_report", "load_target", "parallel_report", "pass_report", "propose_plan", "sensitivity_scan", "write_report"]
