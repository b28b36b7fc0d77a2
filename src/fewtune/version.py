"""fewtune's version, in a module of its own: the package's ``__init__`` is the library face and reaches
every layer, so a lower layer that records the version (a run's results.json) reads it here, not from the
package (which would make an import circle)."""

__version__ = "0.1.0"
