"""maas: Model-as-a-Service on Ray. One spec from raw data to a compressed model behind HTTP."""

__version__ = "0.1.0"
