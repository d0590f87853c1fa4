"""Tests of ``imageproc.errors``: codes, transient or permanent, copies."""

from __future__ import annotations

import inspect

import pytest

import imageproc
from imageproc import errors

ERRORS = [
    obj
    for _, obj in inspect.getmembers(errors, inspect.isclass)
    if issubclass(obj, errors.ImageprocError)
]

PERMANENT = {
    errors.ImageprocError,
    errors.InvalidInput,
    errors.InvalidImage,
    errors.ImageTooLarge,
    errors.InvalidPipeline,
    errors.InvalidKey,
    errors.IdempotencyConflict,
    errors.UnsafeURL,
    errors.FetchFailed,
    errors.ConfigurationError,
    errors.TaskNotFound,
    errors.IllegalTransition,
    errors.LeaseLost,
    errors.ObjectNotFound,
    errors.OriginalGone,
    errors.RenderTimeout,
}
TRANSIENT = {
    errors.StorageError,
    errors.BackendUnavailable,
    errors.WaitTimeout,
    errors.RenderFailed,
    errors.QueueFull,
}


def test_every_error_is_classified_and_exported() -> None:
    assert set(ERRORS) == PERMANENT | TRANSIENT
    for cls in ERRORS:
        assert getattr(imageproc, cls.__name__) is cls
        assert cls.__doc__


@pytest.mark.parametrize("cls", sorted(ERRORS, key=lambda c: c.__name__))
def test_transience_and_code(cls: type[errors.ImageprocError]) -> None:
    error = cls("boom")
    assert error.transient is (cls in TRANSIENT)
    assert errors.is_transient(error) is (cls in TRANSIENT)
    assert error.message == "boom"
    assert str(error) == "boom"
    # Every class in the module docstring's tree, with its code.
    assert f"{cls.__name__} " in errors.__doc__  # type: ignore[operator]
    assert cls.code in errors.__doc__  # type: ignore[operator]


def test_codes_are_unique() -> None:
    codes = [cls.code for cls in ERRORS]
    assert len(codes) == len(set(codes))


def test_an_instance_may_override_transience() -> None:
    assert errors.StorageError("permission denied", transient=False).transient is False
    assert errors.is_transient(errors.StorageError("permission denied", transient=False)) is False


def test_foreign_errors_count_as_transient() -> None:
    assert errors.is_transient(ConnectionResetError()) is True


def test_wait_timeout_is_a_timeout_error() -> None:
    with pytest.raises(TimeoutError):
        raise errors.WaitTimeout("late")
