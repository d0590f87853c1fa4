"""Reprocessing: more variants of an upload already stored, from its original, as a new task.

A new preset, a size added to one: the uploads already stored should have it too. Reprocessing
a task makes a new task on the same original (no bytes uploaded again) with the pipeline asked
for, linked to the first by ``reprocess_of``; its outputs go under its own id, so the first
task's outputs are never rewritten. With ``missing_only`` (the default) the new task makes only
the variants whose names the first task does not have, and when it has them all there is
nothing to do: the first task is the answer. :class:`Processor <imageproc.Processor>` has
:meth:`Reprocessing.reprocess`.
"""

from __future__ import annotations

from imageproc._events import emit
from imageproc._submission import Submission
from imageproc._task import Task
from imageproc._upload import PipelineSpec
from imageproc.engine import _imaging as imaging
from imageproc.errors import OriginalGone
from imageproc.pipeline._pipeline import Pipeline

__all__ = ["Reprocessing", "reprocess"]


class Reprocessing:
    """The reprocessing method; the Processor provides what it uses."""

    _submission: Submission

    def reprocess(
        self,
        task_id: str,
        pipeline: PipelineSpec = None,
        *,
        missing_only: bool = True,
        priority: int = 0,
    ) -> Task:
        """Make the variants of ``pipeline`` (a :class:`Pipeline`, its text or a preset name;
        None: the Processor's default) from the original of task ``task_id``, as a new task
        linked to it by ``reprocess_of``, with the first task's owner and metadata. Its
        outputs go under its own id: the first task's are not touched.

        ``missing_only`` (the default) keeps only the variants whose names the first task's
        outputs do not have; if none is left, nothing is queued and the first task is
        returned. :class:`~imageproc.OriginalGone` if the original is no longer stored
        (retention purged it); :class:`~imageproc.InvalidPipeline` for a pipeline the
        Processor would refuse at submit (presets only, limits, outputs too large for this
        image); :class:`~imageproc.TaskNotFound` for an unknown task.
        """
        return reprocess(
            self._submission, task_id, pipeline, missing_only=missing_only, priority=priority
        )


def reprocess(
    submission: Submission,
    task_id: str,
    spec: PipelineSpec,
    *,
    missing_only: bool,
    priority: int,
) -> Task:
    """What :meth:`Reprocessing.reprocess` does, with ``submission``'s checks and backends."""
    source = submission.retry.call(submission.repository.get, task_id)
    wanted = submission.pipeline if spec is None else submission.resolve(spec)
    if missing_only:
        made = {output.name for output in source.outputs}
        variants = tuple(v for v in wanted.variants if v.name not in made)
        if not variants:
            return source
        if len(variants) != len(wanted.variants):
            wanted = Pipeline(variants)
    if not submission.retry.call(submission.storage.exists, source.source_key):
        raise OriginalGone(f"the original of task {source.id} is no longer stored")
    info = source.source
    imaging.check_output_sizes(
        wanted, info.width, info.height, submission.image_limits, input_format=info.format
    )
    now = submission.clock()
    task = Task.new(
        pipeline=wanted,
        source_key=source.source_key,
        source=info,
        now=now,
        max_attempts=submission.retry.max_attempts,
        priority=priority,
        owner=source.owner,
        metadata=source.metadata,
        reprocess_of=source.id,
    )
    submission.retry.call(lambda: submission.repository.add(task, **submission.limits()))
    emit(submission.events, "submitted", task)
    return task
