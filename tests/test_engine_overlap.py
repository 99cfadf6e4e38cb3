"""The decode loop queues a step before the host reads the step before it (engine/engine.py `_decode`)."""

from __future__ import annotations

import pytest

from engine import Engine, EngineConfig, SamplingParams
from tests.llm_fixtures import make_llama


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_llama(tmp_path_factory.mktemp("llama"))


def test_each_step_is_queued_before_the_last_token_is_read_and_no_step_is_wasted(checkpoint, monkeypatch):
    with Engine(EngineConfig(model=checkpoint, quantization="none", max_batch_size=2, max_seq_len=128)) as eng:
        seen = []
        real = eng.runner.decode

        def decode(rows):
            seen.append([(len(s.output_ids), s.pending) for s in rows if s is not None])
            return real(rows)

        monkeypatch.setattr(eng.runner, "decode", decode)
        result = eng.generate(["Once upon a time"], SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))[0]
    assert len(result.token_ids) == 6
    # tokens read, tokens in flight: the prefill's token is read; every later step is queued with one in flight
    assert seen == [[(1, 0)], [(1, 1)], [(2, 1)], [(3, 1)], [(4, 1)]]


def test_a_stop_drops_the_token_in_flight_and_the_slot_serves_the_next_request_unchanged(checkpoint):
    greedy = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    with Engine(EngineConfig(model=checkpoint, quantization="none", max_batch_size=1, max_seq_len=128)) as eng:
        full = eng.generate(["Once upon a time"], greedy)[0].token_ids
        other_alone = eng.generate(["The knight rode north"], greedy)[0].token_ids
        stop = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, stop_token_ids=[full[3]])
        first = full.index(full[3])
        stopped, other = eng.generate(["Once upon a time", "The knight rode north"], [stop, greedy])
    assert stopped.finish_reason == "stop"
    assert stopped.token_ids == full[: first + 1]
    assert other.token_ids == other_alone
