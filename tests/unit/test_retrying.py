"""RetryPolicy (the one description of retries), its requeue backoff, its in-place retries, and
how the Processor and FsspecStorage take it and their legacy shortcuts."""

from __future__ import annotations

import logging
import math

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from imageproc import ConfigurationError, Processor, RetryPolicy
from imageproc._retrying import call_with_retries, is_transient_imageproc_error
from imageproc.backends._memory import MemoryQueue, MemoryRepository, MemoryStorage
from imageproc.backends.fsspec._storage import FsspecStorage
from imageproc.errors import ObjectNotFound, StorageError, WaitTimeout
from imageproc.testing import sample_image
from tests.support.strategies import backoff_policies

# In-place waits of zero: the retries happen, the test never sleeps.
NO_WAIT = {"in_place_wait": 0.0, "in_place_max_wait": 0.0}

attempts = st.integers(min_value=1, max_value=64)


class Flaky:
    """A call that raises ``errors`` one per call, in order, then returns ``"done"``."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls: list[tuple[object, ...]] = []

    def __call__(self, *args: object) -> str:
        self.calls.append(args)
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def transient(n: int) -> list[Exception]:
    return [StorageError(f"hiccup {i}", transient=True) for i in range(1, n + 1)]


def undelayed(policy: RetryPolicy, attempt: int) -> float:
    return min(policy.backoff_max, policy.backoff_base * 2.0 ** (attempt - 1))


def slack(delay: float) -> float:
    # ``delay - share + uniform(0, share)`` rounds; a few ulps either way is not a wrong delay.
    return 4 * math.ulp(delay)


# -- the value ----------------------------------------------------------------------------------


def test_the_defaults_are_the_documented_ones() -> None:
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.backoff_base, policy.backoff_max) == (5, 2.0, 600.0)
    assert (policy.jitter, policy.in_place_tries) == (0.5, 3)


def test_a_policy_is_a_frozen_value() -> None:
    policy = RetryPolicy(max_attempts=3)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        policy.max_attempts = 4  # type: ignore[misc]
    assert policy == RetryPolicy(max_attempts=3)
    assert policy != RetryPolicy(max_attempts=4)
    assert len({policy, RetryPolicy(max_attempts=3)}) == 1


@pytest.mark.parametrize(
    "field",
    [
        {"max_attempts": 0},
        {"in_place_tries": 0},
        {"backoff_base": -0.1},
        {"backoff_max": -1.0},
        {"in_place_wait": -0.001},
        {"in_place_max_wait": -1.0},
        {"jitter": -0.01},
        {"jitter": 1.01},
    ],
    ids=lambda field: "{}={}".format(*next(iter(field.items()))),
)
def test_impossible_settings_are_refused(field: dict[str, float]) -> None:
    name = next(iter(field))
    with pytest.raises(ValueError, match=name):
        RetryPolicy(**field)  # type: ignore[arg-type]


def test_the_edges_of_each_range_are_accepted() -> None:
    policy = RetryPolicy(
        max_attempts=1,
        in_place_tries=1,
        backoff_base=0,
        backoff_max=0,
        in_place_wait=0,
        in_place_max_wait=0,
        jitter=1,
    )
    assert policy.backoff(1) == 0
    assert RetryPolicy(jitter=0).jitter == 0


# -- the requeue backoff ------------------------------------------------------------------------


@given(policy=backoff_policies, attempt=attempts)
def test_a_delay_lands_within_its_jitter_below_the_exponential_delay(
    policy: RetryPolicy, attempt: int
) -> None:
    delay = undelayed(policy, attempt)
    got = policy.backoff(attempt)
    assert delay * (1 - policy.jitter) - slack(delay) <= got <= delay + slack(delay)


@given(policy=backoff_policies, attempt=attempts)
def test_without_jitter_the_delay_is_exact(policy: RetryPolicy, attempt: int) -> None:
    policy = attrs.evolve(policy, jitter=0)
    assert policy.backoff(attempt) == undelayed(policy, attempt)


@given(policy=backoff_policies, attempt=attempts)
def test_the_delay_never_passes_the_cap(policy: RetryPolicy, attempt: int) -> None:
    assert policy.backoff(attempt) <= policy.backoff_max + slack(policy.backoff_max)


@given(
    base=st.floats(0.001, 10),
    jitter=st.floats(0, 0.5),
    attempt=st.integers(1, 20),
)
def test_delays_grow_until_capped_with_up_to_half_jitter(
    base: float, jitter: float, attempt: int
) -> None:
    # With at most half of a delay random, the next (doubled) delay's floor is at least this
    # delay's ceiling: retries spread out without ever coming back sooner.
    policy = RetryPolicy(backoff_base=base, backoff_max=math.inf, jitter=jitter)
    this, following = policy.backoff(attempt), policy.backoff(attempt + 1)
    assert following >= this - slack(this)
    if jitter == 0:
        assert following == 2 * this


def test_the_cap_holds_from_the_attempt_that_reaches_it() -> None:
    policy = RetryPolicy(backoff_base=1, backoff_max=5, jitter=0)
    assert [policy.backoff(n) for n in range(1, 7)] == [1, 2, 4, 5, 5, 5]


def test_jitter_spreads_the_delays() -> None:
    policy = RetryPolicy(backoff_base=10, jitter=1)
    delays = {policy.backoff(1) for _ in range(50)}
    assert len(delays) > 1
    assert min(delays) < 10


# -- retrying one call in place -----------------------------------------------------------------


def test_a_call_that_succeeds_runs_once_with_its_arguments() -> None:
    call = Flaky()
    assert RetryPolicy(**NO_WAIT).call(call, "key", 2) == "done"
    assert call.calls == [("key", 2)]


def test_a_transient_error_is_tried_again_until_the_call_succeeds() -> None:
    call = Flaky(*transient(2))
    assert RetryPolicy(in_place_tries=3, **NO_WAIT).call(call) == "done"
    assert len(call.calls) == 3


def test_after_in_place_tries_the_last_error_is_raised() -> None:
    errors = transient(5)
    call = Flaky(*errors)
    with pytest.raises(StorageError) as raised:
        RetryPolicy(in_place_tries=3, **NO_WAIT).call(call)
    assert raised.value is errors[2]
    assert len(call.calls) == 3


def test_one_try_in_place_means_no_retry() -> None:
    call = Flaky(*transient(1))
    with pytest.raises(StorageError):
        RetryPolicy(in_place_tries=1, **NO_WAIT).call(call)
    assert len(call.calls) == 1


@pytest.mark.parametrize(
    "error",
    [
        StorageError("permission denied", transient=False),
        ObjectNotFound("no such object"),
        RuntimeError("not ours"),
        OSError("not ours either"),
    ],
    ids=["permanent", "not-found", "runtime-error", "os-error"],
)
def test_other_errors_are_not_retried(error: Exception) -> None:
    call = Flaky(error)
    with pytest.raises(type(error)) as raised:
        RetryPolicy(in_place_tries=5, **NO_WAIT).call(call)
    assert raised.value is error
    assert len(call.calls) == 1


def test_a_custom_retryable_replaces_the_default() -> None:
    def only_key_errors(error: BaseException) -> bool:
        return isinstance(error, KeyError)

    policy = RetryPolicy(in_place_tries=3, **NO_WAIT)
    call = Flaky(KeyError("a"), KeyError("b"))
    assert policy.call(call, retryable=only_key_errors) == "done"
    assert len(call.calls) == 3

    # The default's transient errors are no longer retried.
    call = Flaky(*transient(1))
    with pytest.raises(StorageError):
        policy.call(call, retryable=only_key_errors)
    assert len(call.calls) == 1


def test_each_retry_is_logged_as_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    call = Flaky(*transient(2))
    with caplog.at_level(logging.WARNING, logger="tests.retrying"):
        RetryPolicy(in_place_tries=3, **NO_WAIT).call(
            call, logger=logging.getLogger("tests.retrying")
        )
    retries = [r for r in caplog.records if r.name == "tests.retrying"]
    assert len(retries) == 2
    assert all(r.levelno == logging.WARNING for r in retries)


@given(failures=st.integers(0, 6), tries=st.integers(1, 6))
def test_call_with_retries_makes_one_call_per_failure_up_to_tries(
    failures: int, tries: int
) -> None:
    call = Flaky(*transient(failures))

    def retry() -> str:
        return call_with_retries(
            call, tries=tries, wait=0, max_wait=0, retryable=is_transient_imageproc_error
        )

    if failures < tries:
        assert retry() == "done"
    else:
        with pytest.raises(StorageError, match=f"hiccup {tries}$"):
            retry()
    assert len(call.calls) == min(failures + 1, tries)


def test_only_transient_imageproc_errors_are_retryable_by_default() -> None:
    assert is_transient_imageproc_error(StorageError("x"))
    assert is_transient_imageproc_error(WaitTimeout("x"))
    assert not is_transient_imageproc_error(StorageError("x", transient=False))
    assert not is_transient_imageproc_error(ObjectNotFound("x"))
    assert not is_transient_imageproc_error(ConnectionError("x"))


# -- who takes a policy -------------------------------------------------------------------------


def memory_backends() -> tuple[MemoryStorage, MemoryQueue, MemoryRepository]:
    repository = MemoryRepository()
    return MemoryStorage(), MemoryQueue(repository), repository


def test_the_processor_takes_its_attempts_from_the_policy() -> None:
    with Processor(*memory_backends(), retry=RetryPolicy(max_attempts=2)) as processor:
        assert processor.max_attempts == 2
        assert processor.submit(sample_image(16, 16), "fit:8x8,png").max_attempts == 2


def test_a_legacy_shortcut_wins_over_the_policy_and_keeps_its_other_fields() -> None:
    processor = Processor.in_memory(
        max_attempts=3, retry=RetryPolicy(max_attempts=7, backoff_base=9.0)
    )
    assert processor.max_attempts == 3
    assert processor.backoff_base == 9.0


@pytest.mark.parametrize(
    "shortcut", [{"max_attempts": 0}, {"in_place_tries": 0}, {"backoff_base": -1.0}]
)
def test_an_impossible_shortcut_is_a_configuration_error(shortcut: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError, match=next(iter(shortcut))):
        Processor.in_memory(**shortcut)


def test_fsspec_storage_tries_each_call_as_its_policy_says() -> None:
    assert FsspecStorage("memory://x", retry=RetryPolicy(in_place_tries=2)).retry_attempts == 2


def test_fsspec_storage_retry_attempts_shortcut_wins() -> None:
    assert FsspecStorage("memory://x", retry_attempts=5).retry_attempts == 5
    storage = FsspecStorage("memory://x", retry=RetryPolicy(in_place_tries=2), retry_attempts=5)
    assert storage.retry_attempts == 5


def test_fsspec_storage_refuses_fewer_than_one_try() -> None:
    with pytest.raises(ConfigurationError):
        FsspecStorage("memory://x", retry_attempts=0)
