"""kiln's declared ops. Importing this package registers them all."""

from . import elementwise, misc, nn, paged, quant, reduce, shape  # noqa: F401
