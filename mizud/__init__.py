"""mizud: an open re-implementation of the Mizu VoIP softswitch control API."""

__version__ = "0.1.0"
