"""kiln's declared ops. Importing this package registers them all."""

from . import collective, elementwise, misc, nn, paged, quant, quant_fp8, reduce, shape  # noqa: F401
