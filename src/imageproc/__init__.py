"""imageproc: asynchronous image processing you can embed.

Submit an image and a pipeline; workers (threads in your process, or separate processes) decode it
once, make every variant, store them and record the result::

    from imageproc import Pipeline, Processor

    with Processor.in_memory() as processor:
        task = processor.submit("cat.jpg", Pipeline.parse("thumb=fit:256x256,webp:q80"))
        processor.start(workers=2)
        print(processor.wait(task.id, timeout=30).outputs)

:class:`AsyncProcessor` is its asyncio twin (``await processor.submit(…)``) for ASGI apps.
"""

from imageproc.__version__ import __version__
from imageproc._addresses import AddressPolicy
from imageproc._asyncprocessor import AsyncProcessor
from imageproc._events import Events
from imageproc._fetching import Fetching
from imageproc._idempotency import IdempotencyRecord
from imageproc._processor import Processor, Source, Upload
from imageproc._protocols import (
    BatchQueue,
    DeliveryStore,
    IdempotencyStore,
    Lease,
    ListableStorage,
    ObjectInfo,
    ProgressQueue,
    Queue,
    QueueLimits,
    QueueStats,
    Repository,
    SourceLookup,
    SourceUsage,
    Storage,
    StoredObject,
    TransactionalRepository,
)
from imageproc._retrying import RetryPolicy
from imageproc._task import Output, SourceInfo, Task, TaskError, TaskStatus
from imageproc._taskjson import task_json
from imageproc.delivery._outbox import Delivery, DeliveryStatus
from imageproc.delivery._webhooks import Webhooks
from imageproc.engine._imaging import ImageLimits
from imageproc.errors import (
    BackendUnavailable,
    ConfigurationError,
    FetchFailed,
    IdempotencyConflict,
    IllegalTransition,
    ImageprocError,
    ImageTooLarge,
    InvalidImage,
    InvalidInput,
    InvalidKey,
    InvalidPipeline,
    LeaseLost,
    ObjectNotFound,
    OriginalGone,
    QueueFull,
    RenderFailed,
    RenderTimeout,
    StorageError,
    TaskNotFound,
    UnsafeURL,
    WaitTimeout,
)
from imageproc.pipeline._colour import Colour
from imageproc.pipeline._encoding import Encoding
from imageproc.pipeline._operations import (
    Blur,
    Crop,
    Fill,
    Fit,
    Flip,
    Grayscale,
    Operation,
    Pad,
    Resize,
    Rotate,
    Sharpen,
)
from imageproc.pipeline._pipeline import Pipeline, PipelineLimits
from imageproc.pipeline._variant import Variant

__all__ = [
    "AddressPolicy",
    "AsyncProcessor",
    "BackendUnavailable",
    "BatchQueue",
    "Blur",
    "Colour",
    "ConfigurationError",
    "Crop",
    "Delivery",
    "DeliveryStatus",
    "DeliveryStore",
    "Encoding",
    "Events",
    "FetchFailed",
    "Fetching",
    "Fill",
    "Fit",
    "Flip",
    "Grayscale",
    "IdempotencyConflict",
    "IdempotencyRecord",
    "IdempotencyStore",
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
    "ListableStorage",
    "ObjectInfo",
    "ObjectNotFound",
    "Operation",
    "OriginalGone",
    "Output",
    "Pad",
    "Pipeline",
    "PipelineLimits",
    "Processor",
    "ProgressQueue",
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
    "Source",
    "SourceInfo",
    "SourceLookup",
    "SourceUsage",
    "Storage",
    "StorageError",
    "StoredObject",
    "Task",
    "TaskError",
    "TaskNotFound",
    "TaskStatus",
    "TransactionalRepository",
    "UnsafeURL",
    "Upload",
    "Variant",
    "WaitTimeout",
    "Webhooks",
    "__version__",
    "task_json",
]
