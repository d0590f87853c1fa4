"""The imaging engine: bytes in, bytes out. ``probe`` reads what an upload is, ``render`` makes a
pipeline's variants from it; everything else here (opening with limits, decoding, colour,
transforms, encoding, placeholders, the allocator) serves those two doors.

Pure: the engine does no I/O and knows no queue, backend or processor. It imports only the model
(the pipeline, the task's value types and the errors).
"""

from imageproc.engine._imaging import Rendered, probe, render
from imageproc.engine._location import REWRITTEN_FORMATS, strip_location
from imageproc.engine._open import DEFAULT_FORMATS, ImageLimits

__all__ = [
    "DEFAULT_FORMATS",
    "REWRITTEN_FORMATS",
    "ImageLimits",
    "Rendered",
    "probe",
    "render",
    "strip_location",
]
