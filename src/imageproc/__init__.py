"""imageproc: asynchronous image processing you can embed.

Submit an image and a pipeline; workers (threads in your process, or separate processes) decode it
once, make every variant, store them and record the result::

    from imageproc import Pipeline, Processor

    with Processor.in_memory() as processor:
        task = processor.submit("cat.jpg", Pipeline.parse("thumb=fit:256x256,webp:q80"))
        processor.start(workers=2)
        print(processor.wait(task.id, timeout=30).outputs)
"""

from imageproc.__version__ import __version__
from imageproc.errors import (
    BackendUnavailable,
    ConfigurationError,
    IllegalTransition,
    ImageprocError,
    ImageTooLarge,
    InvalidImage,
    InvalidInput,
    InvalidKey,
    InvalidPipeline,
    LeaseLost,
    ObjectNotFound,
    QueueFull,
    RenderFailed,
    RenderTimeout,
    StorageError,
    TaskNotFound,
    WaitTimeout,
)
from imageproc.events import Events
from imageproc.imaging import ImageLimits
from imageproc.pipeline import (
    Blur,
    Colour,
    Crop,
    Encoding,
    Fill,
    Fit,
    Flip,
    Grayscale,
    Pad,
    Pipeline,
    PipelineLimits,
    Resize,
    Rotate,
    Sharpen,
    Variant,
)
from imageproc.processor import Processor, Upload
from imageproc.protocols import (
    BatchQueue,
    Lease,
    ObjectInfo,
    Queue,
    QueueLimits,
    QueueStats,
    Repository,
    Storage,
)
from imageproc.retrying import RetryPolicy
from imageproc.task import Output, SourceInfo, Task, TaskError, TaskStatus

__all__ = [
    "BackendUnavailable",
    "BatchQueue",
    "Blur",
    "Colour",
    "ConfigurationError",
    "Crop",
    "Encoding",
    "Events",
    "Fill",
    "Fit",
    "Flip",
    "Grayscale",
    "IllegalTransition",
    "ImageLimits",
    "ImageTooLarge",
    "ImageprocError",
    "InvalidImage",
    "InvalidInput",
    "InvalidKey",
    "InvalidPipeline",
    "Lease",
    "LeaseLost",
    "ObjectInfo",
    "ObjectNotFound",
    "Output",
    "Pad",
    "Pipeline",
    "PipelineLimits",
    "Processor",
    "Queue",
    "QueueFull",
    "QueueLimits",
    "QueueStats",
    "RenderFailed",
    "RenderTimeout",
    "Repository",
    "Resize",
    "RetryPolicy",
    "Rotate",
    "Sharpen",
    "SourceInfo",
    "Storage",
    "StorageError",
    "Task",
    "TaskError",
    "TaskNotFound",
    "TaskStatus",
    "Upload",
    "Variant",
    "WaitTimeout",
    "__version__",
]
