"""kiln's declared ops. Importing this package registers them all."""

from . import elementwise, misc, nn, reduce, shape  # noqa: F401
