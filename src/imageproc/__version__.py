"""The version of this build of imageproc (read by the packaging, and by ``--version``)."""

__version__ = "0.1.0"
