"""Job, StoryEvent and StoryOptions: settling, cancel, callbacks, validation."""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError

import pytest

from storyloom.workflow import Job, StoryDraft, StoryEvent, StoryOptions
from storyloom.workflow.job import JobCancelled, describe_error


class Child:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def test_completed_job_reports_result_and_finished_event():
    events: list[StoryEvent] = []
    job = Job(events.append)
    seen: list[Job] = []
    job.add_done_callback(seen.append)
    draft = StoryDraft("idea", story_id="20260101-000000-00000000")
    job.execute(lambda j: draft)
    assert job.done and not job.cancelled and job.result() is draft and seen == [job]
    assert [(e.kind, e.text, e.story_id) for e in events] == [("finished", "completed", draft.story_id)]
    late: list[Job] = []
    job.add_done_callback(late.append)
    assert late == [job]


def test_failed_job_reports_one_line_error_and_partial_draft():
    events: list[StoryEvent] = []
    job = Job(events.append)

    def work(j: Job) -> None:
        j.keep_partial(StoryDraft("idea", concept="so far"))
        raise ValueError("first line\n  - second problem\n")

    job.execute(work)
    with pytest.raises(ValueError, match="first line"):
        job.result()
    assert [e.kind for e in events] == ["error", "finished"]
    assert events[0].text == "first line; - second problem"
    assert events[1].text == "failed" and events[1].draft.concept == "so far"


def test_cancel_reaches_tracked_children_and_settles_as_cancelled():
    events: list[StoryEvent] = []
    job = Job(events.append)
    before, after = Child(), Child()
    job.track(before)
    started, release = threading.Event(), threading.Event()

    def work(j: Job) -> None:
        started.set()
        release.wait()
        j.track(after)
        j.check_cancelled()

    worker = threading.Thread(target=job.execute, args=(work,))
    worker.start()
    started.wait()
    job.cancel()
    assert before.cancelled and not job.done
    release.set()
    worker.join()
    assert after.cancelled, "a child tracked after cancel() is cancelled at once"
    with pytest.raises(CancelledError):
        job.result()
    assert job.cancelled and events[-1].text == "cancelled"
    job.cancel()  # harmless once settled


def test_job_cancelled_before_it_runs_never_runs():
    job = Job()
    job.cancel()
    ran = []
    job.execute(lambda j: ran.append(1))
    assert ran == [] and job.done
    with pytest.raises(CancelledError):
        job.result()


def test_a_failing_callback_never_breaks_the_job():
    def explode(event: StoryEvent) -> None:
        raise RuntimeError("UI went away")

    job = Job(explode)
    job.execute(lambda j: j.emit(StoryEvent("notice", "run", text="hi")) or 42)
    assert job.result() == 42


def test_events_validate_kind_and_step():
    with pytest.raises(ValueError, match="kind"):
        StoryEvent("exploded", "run")
    with pytest.raises(ValueError, match="step"):
        StoryEvent("notice", "dessert")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seed": -1}, "seed"),
        ({"seed": 2**32}, "seed"),
        ({"seed": True}, "seed"),
        ({"width": 500}, "width"),
        ({"height": 32}, "height"),
        ({"steps": 0}, "steps"),
        ({"sampling": {"dessert": {}}}, "unknown step"),
        ({"sampling": {"story": {"warmth": 1}}}, "warmth"),
    ],
)
def test_options_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StoryOptions(**kwargs)


def test_draft_copy_is_deep_enough():
    draft = StoryDraft("idea", sources={"story": "base model"}, adapters_used=[("a", "1")])
    copy = draft.copy(title="t")
    copy.sources["story"] = "x"
    copy.record_adapter("a", "2")
    assert draft.sources == {"story": "base model"} and draft.adapters_used == [("a", "1")]
    assert copy.adapters_used == [("a", "2")] and copy.title == "t"


def test_describe_error_names_a_silent_exception():
    assert describe_error(RuntimeError()) == "RuntimeError"


def test_job_cancelled_inside_work_settles_as_cancelled_without_cancel():
    job = Job()

    def work(j: Job) -> None:
        raise JobCancelled  # e.g. the engine shut down and ended the request as "cancelled"

    job.execute(work)
    with pytest.raises(CancelledError):
        job.result()


def test_options_check_sampling_values():
    with pytest.raises(ValueError, match=r"sampling\['story'\]: temperature"):
        StoryOptions(sampling={"story": {"temperature": -1.0}})


def test_finished_is_always_the_last_event():
    events: list[StoryEvent] = []
    job = Job(events.append)
    job.execute(lambda j: None)
    job.emit(StoryEvent("text_delta", "story", text="late"))  # e.g. a stream reader still draining
    assert [e.kind for e in events] == ["finished"]
