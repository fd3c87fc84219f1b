"""Built-in models: small, dependency-free networks for demos, tests and benchmarks.

Takes nothing; gives `nn.Module`s by name (`get_model("tiny-gpt")`) with random weights.
"""

from .tiny_gpt import TinyGPT, TinyGPTConfig, get_model

__all__ = ["TinyGPT", "TinyGPTConfig", "get_model"]
