"""kmap: medical knowledge maps of large language models.

All science lives in this package; the Snakemake entry scripts beside it only parse the
``snakemake`` object and call functions from here.
"""

__version__ = "0.1.0"
