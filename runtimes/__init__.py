"""Ray-free model runtimes, one per framework, behind one interface (see base.Runtime)."""
from .base import MODEL_NAMES, Runtime, load, runtime_class
from .schema import FEATURES, LABELS, N_CLASSES, N_FEATURES

__all__ = ["MODEL_NAMES", "Runtime", "load", "runtime_class", "FEATURES", "LABELS", "N_CLASSES", "N_FEATURES"]
