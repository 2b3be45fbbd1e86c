"""NeuroGrid engine: the pure scheduling core, the live trio runtime and the worker."""
