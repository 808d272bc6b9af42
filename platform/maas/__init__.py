"""maas: Model-as-a-Service on Ray. One spec from raw data to a compressed model behind HTTP."""

from maas.version import __version__


def __getattr__(name):  # keep `import maas` light: the SDK (and Ray) load on first use
    if name in ("Client", "Job"):
        from maas import submit

        return getattr(submit, name)
    raise AttributeError(f"module 'maas' has no attribute {name!r}")


__all__ = ["Client", "Job", "__version__"]
