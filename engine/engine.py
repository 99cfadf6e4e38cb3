"""The engine: one thread owns the device; any thread submits requests and receives text deltas."""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from collections.abc import Sequence as Seq
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import torch

from engine.config import EngineConfig, ModelFootprint, SamplingParams, check_render_sm_share
from engine.device import compute_dtype, kernels_available, resolve_device
from engine.errors import EngineClosedError, InvalidRequestError, QueueFullError
from engine.handle import GenerationResult, RequestHandle
from engine.job_stream import JobStream
from engine.kv_cache import KVCache
from engine.loader import load_model
from engine.lora.registry import AdapterRegistry
from engine.model_config import LlamaArgs
from engine.model_runner import ModelRunner
from engine.parking import ParkedTensors
from engine.quant import TRITON_ROWS
from engine.sampling import RowSampler
from engine.scheduler import Scheduler
from engine.sequence import Sequence
from engine.stats import EngineStats, StatsRecorder
from engine.tokenizer import IncrementalDetokenizer, Prompt, PromptEncoder
from engine.transfer import PendingTokens

log = logging.getLogger(__name__)
RETURN_RETRY_S = 0.5  # a parked LLM that did not fit back on the GPU tries again this often
PREFILL_BATCH_TOKENS = 2048  # prompts admitted together share one prefill forward up to this many tokens


@dataclass
class DecodeStep:
    """A queued decode step whose tokens the host has not read yet."""

    seqs: list[Sequence]
    tokens: PendingTokens


def prefill_groups(seqs: list[Sequence]) -> list[list[Sequence]]:
    """Admitted prompts in batches for one prefill forward each, whatever their adapters: at most
    PREFILL_BATCH_TOKENS tokens unless a single prompt is longer; admission order is kept."""
    groups: list[list[Sequence]] = []
    tokens = 0
    for seq in seqs:
        n = len(seq.prompt_ids)
        if not groups or tokens + n > PREFILL_BATCH_TOKENS:
            groups.append([])
            tokens = 0
        groups[-1].append(seq)
        tokens += n
    return groups


Sampling = SamplingParams | Seq[SamplingParams] | None


class Engine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = compute_dtype(self.device)
        folder = config.model
        self.model = load_model(
            folder,
            self.device,
            self.dtype,
            config.quantization,
            config.max_seq_len,
            TRITON_ROWS[config.kernels] if kernels_available(self.device) else range(0),
        )
        self.args: LlamaArgs = self.model.args
        self.encoder = PromptEncoder(folder, self.args)
        a = self.args
        self.cache = KVCache(
            a.num_layers,
            config.max_batch_size,
            a.num_kv_heads,
            config.max_seq_len,
            a.head_dim,
            self.device,
            self.dtype,
        )
        self.adapters = AdapterRegistry(self.model, config, self.device, self.dtype, self.run_on_engine_thread)
        self.runner = ModelRunner(self.model, self.cache, self.device, config.cuda_graphs, self.adapters.version)
        self.scheduler = Scheduler(config.max_batch_size)
        self._stats = StatsRecorder()
        self._in_flight: DecodeStep | None = None
        self._cv = threading.Condition()
        self._incoming: list[list[Sequence]] = []
        self._jobs: deque[tuple[Callable[[], Any], Future]] = deque()
        self._ids = itertools.count(1)
        # On CUDA the LLM runs on a high-priority stream and jobs (renders) on a normal one: when both have work,
        # the GPU schedules decode blocks first, so a render slows the story down as little as possible. With
        # config.render_sm_share, jobs are also confined to that share of the SMs (engine/job_stream.py).
        self._llm_stream: torch.cuda.Stream | None = None
        self._jobs_on: JobStream | None = None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # weights and caches were written on the loading thread's stream
            _, highest = torch.cuda.Stream.priority_range()
            self._llm_stream = torch.cuda.Stream(self.device, priority=highest)
            self._jobs_on = JobStream(self.device, config.render_sm_share)
        self._parked: ParkedTensors | None = None  # the LLM's tensors are in CPU RAM (drawing, or not back yet)
        self._drawing_parked = False
        self._failed_returns = 0
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="storyloom-engine", daemon=True)
        self._thread.start()

    # ---- public API -------------------------------------------------------------------------------------------

    @property
    def tokenizer(self):
        return self.encoder.tokenizer

    @property
    def model_id(self) -> str:
        return self.config.model.name

    @property
    def max_seq_len(self) -> int:
        return self.config.max_seq_len

    def count_tokens(self, prompt: Prompt) -> int:
        return len(self.encoder.encode(prompt))

    def submit(
        self, prompt: Prompt, sampling: SamplingParams | None = None, adapter: str | None = None
    ) -> RequestHandle:
        return self.submit_batch([prompt], sampling, [adapter])[0]

    def submit_batch(
        self, prompts: Seq[Prompt], sampling: Sampling = None, adapters: Seq[str | None] | None = None
    ) -> list[RequestHandle]:
        """Submits prompts that are admitted together, so they prefill in one step and decode in the same batch."""
        if self._closed:
            raise EngineClosedError("the engine is closed")
        prompts = list(prompts)
        params = self._per_prompt(sampling, len(prompts))
        names = list(adapters) if adapters is not None else [None] * len(prompts)
        if len(names) != len(prompts):
            raise InvalidRequestError(f"adapters: got {len(names)} entries for {len(prompts)} prompts")
        encoded = [self._encode(p, i, len(prompts)) for i, p in enumerate(prompts)]
        with self._cv:
            pending = sum(len(g) for g in self._incoming) + self.scheduler.num_waiting
            if pending + len(prompts) > self.config.max_queue:
                raise QueueFullError(f"{pending} requests are already waiting (limit {self.config.max_queue})")
        self.adapters.retain(names)
        seqs = [self._sequence(ids, p, name) for ids, p, name in zip(encoded, params, names, strict=True)]
        with self._cv:
            self._incoming += self._groups(seqs)
            self._cv.notify()
        return [s.handle for s in seqs]

    def generate(
        self, prompts: Seq[Prompt], sampling: Sampling = None, adapters: Seq[str | None] | None = None
    ) -> list[GenerationResult]:
        return [h.result() for h in self.submit_batch(prompts, sampling, adapters)]

    def fan_out(
        self, prompt: Prompt, sampling: SamplingParams | None = None, adapters: Seq[str | None] = (None,)
    ) -> list[GenerationResult]:
        """One prompt through several adapters (None = the base) in one batch; one result per adapter."""
        return self.generate([prompt] * len(adapters), sampling, list(adapters))

    def stats(self) -> EngineStats:
        with self._cv:
            waiting = sum(len(g) for g in self._incoming) + self.scheduler.num_waiting
        return self._stats.snapshot(len(self.scheduler.running), waiting)

    def footprint(self) -> ModelFootprint:
        """Device bytes: weights (buffers; a tied lm_head counted once), KV cache, allocated LoRA slots."""
        weights = sum(b.numel() * b.element_size() for b in self.model.buffers())
        if self.model.lm_head.data_ptr() == self.model.embed.data_ptr():
            weights -= self.model.lm_head.numel() * self.model.lm_head.element_size()
        return ModelFootprint(weights, self.cache.nbytes(), self.adapters.slots_nbytes())

    def run_on_engine_thread(self, fn: Callable[[], Any]) -> Future:
        """Runs fn on the engine thread (between steps) and returns its future. Inline if called from it."""
        future: Future = Future()
        if threading.current_thread() is self._thread:
            self._run_job(fn, future)
            return future
        with self._cv:
            if self._closed:
                raise EngineClosedError("the engine is closed")
            self._jobs.append((fn, future))
            self._cv.notify()
        return future

    def set_render_sm_share(self, share: float | None) -> Future:
        """Confine renders to this share of the SMs from the next job on (None: all SMs); see
        engine/job_stream.py. The future says when it applies (between jobs, on the engine thread)."""
        check_render_sm_share(share)
        self.config.render_sm_share = share

        def apply() -> None:
            if self._jobs_on is not None:
                self._jobs_on = JobStream(self.device, share)

        return self.run_on_engine_thread(apply)

    @property
    def llm_parked(self) -> bool:
        """True while the LLM waits in CPU RAM: drawing under the swap plan, or not back on the GPU yet."""
        return self._parked is not None

    @contextlib.contextmanager
    def parked(self) -> Iterator[None]:
        """On the engine thread, for the body: the LLM (weights, adapter slots, KV cache) waits in CPU RAM and its
        GPU memory is free for the image model; LLM requests wait too (`step_between` does nothing). Back after,
        with every running request's cache intact. For the VRAM plan that swaps the LLM out while drawing."""
        assert threading.current_thread() is self._thread, "parked() runs on the engine thread only"
        assert not self._drawing_parked, "the LLM is parked already"
        if self._parked is None:  # else it is still out from a return that did not fit
            self.runner.release_graphs()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self._parked = ParkedTensors(self.model.device_tensors() + self.cache.tensors())
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
                log.info("parked the LLM in CPU RAM (%.2f GB); %.2f GB of GPU memory stays allocated",
                         self._parked.nbytes / 2**30, torch.cuda.memory_allocated(self.device) / 2**30)  # fmt: skip
        self._drawing_parked = True
        try:
            yield
        finally:
            self._drawing_parked = False
            if self.device.type == "cuda":
                torch.cuda.empty_cache()  # what the body cached goes back first
            self._return_llm()

    def _return_llm(self) -> bool:
        """Brings a parked LLM back; False while it does not fit (it stays parked and LLM steps wait)."""
        try:
            self._parked.restore()
        except torch.OutOfMemoryError as exc:
            self._failed_returns += 1
            log.log(logging.ERROR if self._failed_returns == 1 else logging.DEBUG,
                    "the LLM does not fit back on the GPU yet (%s); text generation waits and tries again",
                    str(exc).splitlines()[0])  # fmt: skip
            return False
        if self._failed_returns:
            log.info("the LLM is back on the GPU after %d tries", self._failed_returns + 1)
        self._parked, self._failed_returns = None, 0
        return True

    @torch.inference_mode()
    def step_between(self) -> None:
        """Called by long jobs on the engine thread (e.g. after each denoising step is queued) so LLM requests
        keep moving. On CUDA, jobs run on their own stream: LLM steps run on the engine's stream until the job's
        queued GPU work is done, so both models compute at the same time. In inference mode like the engine loop,
        whatever mode the job is in (the SDXL renderer turns it off)."""
        assert threading.current_thread() is self._thread, "step_between runs on the engine thread only"
        if self._parked is not None:
            return
        job_done = None
        if self._jobs_on is not None:
            job_done = torch.cuda.Event()
            job_done.record(self._jobs_on.stream)
        with self._engine_stream():
            while True:
                self._absorb_incoming()
                if not (self.scheduler.running or self.scheduler.waiting):
                    return
                self.step()
                if job_done is None or job_done.query():
                    return

    def close(self) -> None:
        with self._cv:
            if self._closed:
                return
            self._closed = True
            self._cv.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- engine thread -----------------------------------------------------------------------------------------

    def step(self) -> None:
        if self._parked is not None and not self._return_llm():  # jobs still run; LLM steps wait for it
            time.sleep(RETURN_RETRY_S)
            return
        self._reap_cancelled()
        admitted = self.scheduler.schedule(self.adapters.acquire)
        if admitted:
            self._prefill(admitted)
        if self.scheduler.running:
            self._decode()

    @torch.inference_mode()
    def _loop(self) -> None:
        """Everything on the engine thread runs in inference mode (tensors made here stay writable here) and, on
        CUDA, on the LLM stream."""
        with self._engine_stream():
            self._serve()
        self._shutdown()

    def _serve(self) -> None:
        while True:
            with self._cv:
                while not (self._closed or self._incoming or self._jobs or self.scheduler.running):
                    if self.scheduler.waiting:
                        self._cv.wait(timeout=0.05)
                        break
                    self._cv.wait()
                if self._closed:
                    return
            self._absorb_incoming()
            self._run_jobs()
            try:
                self.step()
            except Exception:  # a failed step ends its requests (done inside); never the engine
                log.exception("engine step failed")

    def _absorb_incoming(self) -> None:
        with self._cv:
            incoming, self._incoming = self._incoming, []
        for group in incoming:
            self.scheduler.add(group)

    def _run_jobs(self) -> None:
        while True:
            with self._cv:
                if not self._jobs:
                    return
                fn, future = self._jobs.popleft()
            self._run_job(fn, future)

    def _run_job(self, fn: Callable[[], Any], future: Future) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            if self._jobs_on is None:
                result = fn()
            else:
                with torch.cuda.stream(self._jobs_on.stream):
                    result = fn()
                self._jobs_on.stream.synchronize()
            future.set_result(result)
        except BaseException as e:  # handed to the caller through the future
            future.set_exception(e)

    def _engine_stream(self):
        return contextlib.nullcontext() if self._llm_stream is None else torch.cuda.stream(self._llm_stream)

    def _prefill(self, seqs: list[Sequence]) -> None:
        for group in prefill_groups(seqs):
            self._prefill_group(group)
        self._stats.record("prefill", [s.request_id for s in seqs], [s.adapter for s in seqs], len(seqs))

    def _prefill_group(self, group: list[Sequence]) -> None:
        """One forward for the group; if it fails, each prompt again alone, so only a bad one ends in an error."""
        try:
            logits = self.runner.prefill(group)
            tokens = self.runner.take_tokens(logits, group, by_slot=False).wait()
        except Exception as e:
            if len(group) > 1:
                log.warning("batched prefill of %d requests failed (%s); prefilling them one by one", len(group), e)
                for seq in group:
                    self._prefill_group([seq])
                return
            log.exception("prefill of request %d failed", group[0].request_id)
            self._finish(group[0], "error", f"prefill failed: {e}")
            return
        for seq, token in zip(group, tokens, strict=True):
            seq.append(token, self.encoder.eos_ids)
            if seq.finish_reason:
                self._finish(seq)

    def _decode(self) -> None:
        """Queues this decode step, then reads the one before it: the host's share of a step (reading its tokens,
        streaming text, preparing the next inputs) runs while the GPU computes the next step."""
        queued = self._queue_decode()
        self._read_decode()
        self._in_flight = queued

    def _queue_decode(self) -> DecodeStep | None:
        rows = [self.scheduler.running.get(i) for i in range(self.scheduler.decode_rows())]
        rows = [s if s is not None and s.wants_token else None for s in rows]
        live = [s for s in rows if s is not None]
        if not live:
            return None
        try:
            tokens = self.runner.take_tokens(self.runner.decode(rows), live, by_slot=True)
        except Exception as e:
            self._fail_decode(live, e)
            return None
        for seq in live:
            seq.pending += 1
        self._stats.record("decode", [s.request_id for s in live], [s.adapter for s in live], len(live))
        return DecodeStep(live, tokens)

    def _read_decode(self) -> None:
        step, self._in_flight = self._in_flight, None
        if step is None:
            return
        try:
            tokens = step.tokens.wait()
        except Exception as e:
            self._fail_decode([s for s in step.seqs if s.finish_reason is None], e)
            return
        for seq, token in zip(step.seqs, tokens, strict=True):
            seq.pending -= 1
            if seq.finish_reason is not None:  # it ended while this step ran (stop, cancel, error): token dropped
                continue
            seq.append(token, self.encoder.eos_ids)
            if seq.finish_reason:
                self._finish(seq)

    def _fail_decode(self, seqs: list[Sequence], error: Exception) -> None:
        log.exception("decode step failed")
        for seq in seqs:
            self._finish(seq, "error", f"decode failed: {error}")

    def _reap_cancelled(self) -> None:
        for seq in self.scheduler.remove_waiting(lambda s: s.handle.cancel_requested):
            self._finish(seq, "cancelled")
        for seq in [s for s in self.scheduler.running.values() if s.handle.cancel_requested]:
            self._finish(seq, "cancelled")

    def _finish(self, seq: Sequence, reason: str | None = None, error: str | None = None) -> None:
        admitted = seq.slot >= 0
        if admitted:
            self.scheduler.release(seq)
        self.adapters.release(seq.adapter, admitted)
        seq.finish(reason, error)
        self._stats.record_finished()

    def _shutdown(self) -> None:
        self._absorb_incoming()
        for seq in self.scheduler.remove_waiting(lambda s: True) + list(self.scheduler.running.values()):
            self._finish(seq, "cancelled")
        with self._cv:
            jobs, self._jobs = list(self._jobs), deque()
        for _, future in jobs:
            future.cancel()

    # ---- helpers -------------------------------------------------------------------------------------------------

    def _groups(self, seqs: list[Sequence]) -> list[list[Sequence]]:
        """Splits a submission into groups that fit one batch: at most max_batch_size rows and max_loras adapters."""
        groups: list[list[Sequence]] = [[]] if seqs else []
        for seq in seqs:
            group = groups[-1]
            adapters = {s.adapter for s in group if s.adapter is not None} | {seq.adapter} - {None}
            if len(group) == self.config.max_batch_size or len(adapters) > self.config.max_loras:
                groups.append([])
            groups[-1].append(seq)
        return groups

    def _per_prompt(self, sampling: Sampling, n: int) -> list[SamplingParams]:
        if sampling is None:
            return [SamplingParams()] * n
        if isinstance(sampling, SamplingParams):
            return [sampling] * n
        params = list(sampling)
        if len(params) != n:
            raise InvalidRequestError(f"sampling: got {len(params)} SamplingParams for {n} prompts")
        return params

    def _encode(self, prompt: Prompt, index: int, count: int) -> list[int]:
        where = f"prompt {index}" if count > 1 else "prompt"
        try:
            ids = self.encoder.encode(prompt)
        except InvalidRequestError as e:
            raise InvalidRequestError(f"{where}: {e}") from e
        limit = self.config.max_seq_len - 1
        if not ids:
            raise InvalidRequestError(f"{where}: empty prompt")
        if len(ids) > limit:
            raise InvalidRequestError(
                f"{where}: {len(ids)} tokens is longer than the limit of {limit} tokens (max_seq_len {limit + 1} minus 1)"
            )
        return ids

    def _sequence(self, ids: list[int], params: SamplingParams, adapter: str | None) -> Sequence:
        request_id = next(self._ids)
        handle = RequestHandle(request_id, adapter, self._wake)
        return Sequence(
            request_id=request_id,
            prompt_ids=ids,
            sampling=params,
            adapter=adapter,
            handle=handle,
            detok=IncrementalDetokenizer(self.tokenizer),
            sampler=RowSampler(params, ids, self.args.vocab_size, self.device),
            max_seq_len=self.config.max_seq_len,
        )

    def _wake(self) -> None:
        with self._cv:
            self._cv.notify()
