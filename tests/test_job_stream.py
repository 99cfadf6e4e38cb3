"""The render stream confined to a share of the SMs (CUDA green contexts); needs a GPU."""

from __future__ import annotations

import builtins
import logging

import pytest
import torch

from engine.job_stream import JobStream

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICE = torch.device("cuda:0")


def _runs_a_matmul(stream: torch.cuda.Stream) -> bool:
    x = torch.randn(256, 256)
    x_gpu = x.to(DEVICE)
    with torch.cuda.stream(stream):
        y = x_gpu @ x_gpu
    stream.synchronize()
    return torch.allclose(y.cpu(), x @ x, rtol=1e-2, atol=1e-2)


def test_all_sms_without_a_share():
    jobs = JobStream(DEVICE, None)
    assert jobs.green_context is None and jobs.sm_share is None
    assert _runs_a_matmul(jobs.stream)


def test_a_share_runs_on_a_green_context_or_says_why_not(caplog):
    caplog.set_level(logging.INFO, logger="engine.job_stream")
    jobs = JobStream(DEVICE, 0.5)
    expected = "SMs stay free" if jobs.green_context is not None else "no CUDA green contexts"
    assert expected in caplog.text
    assert _runs_a_matmul(jobs.stream)


def test_without_green_contexts_jobs_share_every_sm(monkeypatch, caplog):
    real_import = builtins.__import__

    def no_green(name, *args, **kwargs):
        if name == "torch.cuda.green_contexts":
            raise ImportError("simulated")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_green)
    jobs = JobStream(DEVICE, 0.5)
    assert jobs.green_context is None and jobs.sm_share is None
    assert "simulated" in caplog.text
    assert _runs_a_matmul(jobs.stream)
