"""Frontend: PyTorch programs in, kiln IR out.

Takes an nn.Module or function (plus example inputs); gives a verified kiln `Graph` at the ATen
level with parameters and buffers as named constants, symbolic dims and explicit buffer writes.
Two capture paths share one importer (`fx_import`): `export.trace_export` (torch.export, whole
graph, ahead of time) and `dynamo.make_backend` (the torch.compile backend; graph breaks stay in
Python).
"""

from .export import Traced, trace_export
from .fx_import import CONVERTERS, converter

__all__ = ["CONVERTERS", "Traced", "converter", "trace_export"]
