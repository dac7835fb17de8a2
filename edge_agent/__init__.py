"""EdgeFleet edge agent: local kube proxy and cache, reverse tunnel, device twins, node status."""

__version__ = "0.1.0"
__all__ = ["__version__"]
