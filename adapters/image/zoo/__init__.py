"""More image attacks (the zoo of the papers) and datasets; each module registers itself on import."""
from . import bppa, cba, clb, datasets, dynamic, issba, lira, trojan  # noqa: F401
