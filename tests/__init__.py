"""imageproc's tests: ``unit`` (in process), ``integration`` (real components) and
``support`` (shared helpers)."""
