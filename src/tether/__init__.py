"""tether: reach and operate fleets of devices inside closed private networks."""

__version__ = "0.1.0"
__all__ = ["__version__"]
