"""The index backends' names, apart from the index itself so `indivaid --help` stays light.

Listing the choices needs no torch, numpy or FAISS; `indivaid_core.identify.index` re-exports
these names.
"""

BACKENDS = ("exact", "faiss-flat", "faiss-ivf", "faiss-hnsw")
APPROXIMATE = ("faiss-ivf", "faiss-hnsw")
