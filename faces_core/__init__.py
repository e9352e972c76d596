"""faces_core: the domain logic of the faces pipeline (no Prefect in here)."""

__version__ = "0.1.0"
