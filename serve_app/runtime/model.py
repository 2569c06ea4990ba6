"""One SavedModel version, its signatures, batching and warmup: held by each serving replica
(``runtime.dataplane``), or the model-version deployment of a model in deployments of its own.

A replica loads its version in ``__init__`` (retrying a bounded number of times; a version in an
object store is first downloaded into the node's cache: ``serve_app.storage``), replays the
version's warmup file, and only then reports healthy. A version that cannot load does not crash
the replica (that would fail the whole Serve application): it keeps the error, answers every
call with it, and the version manager reads it, marks the version END with that error and never
routes to it.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
import numpy as np

from compat import dataplane, inference, json_codec, open_inference, platforms, tensors
from compat.errors import DeadlineExceeded, InvalidArgument, ServingError, Unavailable
from compat.platforms import LoadedModel
from compat.protos import predict_pb2, prediction_log_pb2
from compat.servable import SessionOptions, usable_cores
from compat.warmup import replay_warmup
from serve_app import metrics
from serve_app.calls import Api, ModelCall, ModelReply, Wire
from serve_app.config.args import BatchingArgs
from serve_app.runtime import request_log
from serve_app.runtime.batching import BatchScheduler, batchable
from serve_app.runtime.replica_config import SessionConfig, VersionConfig
from serve_app.storage.factory import open_store

logger = logging.getLogger("ray.serve")

RUNS_AT_ONCE = 4
"""Model runs at once outside batching, where TF's inter-op pool spreads their ops."""


def runs_at_once(session: SessionConfig) -> int:
    """Model runs a version starts at once outside batching: one per intra-op thread (0: every
    core) with ops in their calling thread (inter_op < 0), else ``RUNS_AT_ONCE`` (TF's pool)."""
    if session.inter_op_parallelism >= 0:
        return RUNS_AT_ONCE
    return session.intra_op_parallelism or usable_cores()


def own_batching(path: str) -> BatchingArgs | None:
    """The version's ``batching_params.pbtxt`` (TF Serving's per-model batching parameters),
    unset fields at TF Serving's defaults; None without one; one that does not parse fails."""
    from compat.text_configs import BATCHING_PARAMS_FILE, read_batching_parameters

    file = Path(path) / BATCHING_PARAMS_FILE
    if not file.is_file():
        return None
    try:
        return BatchingArgs.model_validate(read_batching_parameters(file))
    except ValueError as e:  # e.g. allowed_batch_sizes not ending at max_batch_size
        raise InvalidArgument(f"Invalid batching parameters in {file}: {e}") from None


@dataclass(frozen=True)
class LoadState:
    """What the version manager needs to know about a replica's load."""

    ok: bool
    message: str = ""
    load_seconds: float = 0.0
    warmup_records: int = 0
    """Records of the version's warmup file replayed before it reported loaded."""


class ModelVersion:
    """Serves one (model, version): ``call`` takes a ``ModelCall`` and answers a ``ModelReply``."""

    def __new__(cls, *args: Any, **kwargs: Any) -> ModelVersion:
        freeze_once()  # before this object exists: frozen, it would pin its version for good
        return super().__new__(cls)

    def __init__(
        self,
        model: str,
        version: int,
        path: str,
        session: SessionConfig | Mapping[str, Any],
        warmup: bool = True,
        max_load_retries: int = 0,
        load_retry_interval_s: float = 0.0,
        check_method_name: bool = False,
        warmup_iterations: int = 0,
        tensor_content: bool = False,
        per_model_batching: bool = False,
        object_store_cache_max_mb: int = 10240,
        build: str = "",
    ) -> None:
        self._build = build  # in a deployment of its own: the version it was built with
        session = SessionConfig.model_validate(session)
        self.model = model
        self.version = version
        self.check_method_name = check_method_name
        self.tensor_content = tensor_content
        """Predict outputs in ``tensor_content`` (``--enable_serialization_as_tensor_content``)."""
        self.own_batching: BatchingArgs | None = None
        """The version's ``batching_params.pbtxt`` (``--enable_per_model_batching_parameters``)."""
        self.servable: LoadedModel | None = None
        self.error: ServingError | None = None
        self._threads = session.intra_op_parallelism or usable_cores()
        """The session's intra-op threads: batch threads when ``num_batch_threads`` is 0."""
        self.batching = self._resolve(BatchingArgs())
        self.request_log: request_log.RequestLog | None = None
        """Where a sample of this version's answered requests is logged (``logging_config``)."""
        self._runs_at_once = runs_at_once(session)
        self._pool = self._make_pool(self.batching)
        self._batches = BatchScheduler(
            self._servable,
            self._pool,
            self.batching,
            functools.partial(metrics.record_batch, model, version),
        )
        started = time.monotonic()
        warmed = 0
        self._store = open_store(path)
        self._local: Path | None = None
        """The version's local directory (``VersionStore.fetch``), held while it is served."""
        for attempt in range(max_load_retries + 1):
            if attempt:
                time.sleep(load_retry_interval_s)
            try:
                if self._local is None:  # held until __del__
                    self._local = self._store.fetch(path, object_store_cache_max_mb << 20)
                local = str(self._local)
                self.servable = platforms.load(local, SessionOptions(**session.model_dump()))
                if per_model_batching:
                    self.own_batching = own_batching(local)
                if warmup:
                    warmed = replay_warmup(
                        self.servable, local, model, version, iterations=max(1, warmup_iterations)
                    )
                self.error = None
                break
            except ServingError as e:
                self.error = e
            except Exception as e:  # a loader bug must not kill the app
                self.error = Unavailable(f"{type(e).__name__}: {e}")
            if self.servable is not None:
                self.servable.close()
                self.servable = None
            logger.warning(
                "Loading %s version %s failed (attempt %d of %d): %s",
                model,
                version,
                attempt + 1,
                max_load_retries + 1,
                self.error,
            )
        self.load_seconds = time.monotonic() - started
        self.warmup_records = warmed
        metrics.record_load(model, version, self.servable is not None, self.load_seconds)
        if self.servable is not None:
            logger.info(
                "Loaded %s version %s in %.2fs%s",
                model,
                version,
                self.load_seconds,
                f" (warmup: {warmed} records replayed)" if warmed else "",
            )

    # --- lifecycle -------------------------------------------------------------------------

    def reconfigure(self, config: VersionConfig | Mapping[str, Any]) -> None:
        """Batching knobs and the request log change at runtime without reloading the model
        (``VersionConfig``: its ``request_logs`` come from the model config's
        ``logging_config``)."""
        config = VersionConfig.model_validate(config)
        self.request_log = request_log.for_model(self.model, config.request_logs.get(self.model))
        self.batching = self._resolve(config.batching)
        if self.batching.num_batch_threads > self._pool_size:
            old, self._pool = self._pool, self._make_pool(self.batching)
            self._batches.pool = self._pool
            old.shutdown(wait=False)  # what it runs finishes
        self._batches.configure(self.batching)

    def _resolve(self, knobs: BatchingArgs) -> BatchingArgs:
        """The server's knobs, or with batching on the version's own file's but for the
        server's ``num_batch_threads`` (TF Serving's shared thread pool); that 0 made the
        session's intra-op threads."""
        if knobs.enabled and self.own_batching is not None:
            threads = knobs.num_batch_threads
            knobs = self.own_batching.model_copy(update={"num_batch_threads": threads})
        if knobs.num_batch_threads:
            return knobs
        return knobs.model_copy(update={"num_batch_threads": self._threads})

    def _make_pool(self, knobs: BatchingArgs) -> ThreadPoolExecutor:
        """Model runs happen here, off the event loop: ``runs_at_once`` threads, and at least
        one per batch thread."""
        self._pool_size = max(self._runs_at_once, knobs.num_batch_threads)
        return ThreadPoolExecutor(self._pool_size, f"{self.model}-{self.version}")

    def queued_batches(self) -> int:
        """Batches of this version waiting to run (0 without batching)."""
        return self._batches.queued_batches

    async def built_with(self) -> str:
        """The version it was built with, as started (``Applier.adopt_running``)."""
        return self._build

    def load_state(self) -> LoadState:
        if self.error is not None:
            return LoadState(False, self.error.message, self.load_seconds)
        return LoadState(True, "", self.load_seconds, self.warmup_records)

    def _servable(self) -> LoadedModel:
        if self.servable is None:
            assert self.error is not None
            raise self.error
        return self.servable

    # --- running ----------------------------------------------------------------------------

    async def _run(
        self, call: dataplane.PredictCall, deadline: float | None
    ) -> dict[str, np.ndarray]:
        """One Predict's run: through the batching queue when it can be batched."""
        check_deadline(deadline)
        if self.batching.enabled:
            call.deadline = deadline
            if batchable(call):
                result = await self._batches.submit(call)
                if isinstance(result, ServingError):
                    raise result
                return cast(dict[str, np.ndarray], result)
        servable = self._servable()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, servable.run, call.signature, call.inputs, call.output_aliases
        )

    # --- the one entry: a ModelCall in, a ModelReply out -----------------------------------

    async def call(self, call: ModelCall) -> ModelReply:
        """Answer ``call`` (``serve_app.calls``); every failure is a status, never an exception.
        A sampled call that succeeds is handed to the request log with its response."""
        log = self.request_log
        logged = log is not None and call.api in _LOG_KINDS and log.sampled()
        try:
            payload, record = await _HANDLERS[call.api](self, call, logged)
            if logged and record is not None:
                held = request_log.held_bytes(record)  # the request and response it keeps
                log.submit(functools.partial(self._log_record, call.api, record), held)  # type: ignore[union-attr]
            return ModelReply(payload=payload)
        except ServingError as e:
            return ModelReply.error(e)
        except Exception as e:  # never let an exception escape to Ray
            logger.exception("Unexpected error in %s version %s", self.model, self.version)
            return ModelReply(code=grpc.StatusCode.INTERNAL, message=f"{type(e).__name__}: {e}")

    def _log_record(self, api: Api, record: Callable[[], tuple[Any, Any]]) -> Any:
        """The ``PredictionLog`` of an answered call (built in the request log's thread)."""
        request, response = record()
        log = prediction_log_pb2.PredictionLog()
        meta = log.log_metadata
        dataplane.set_model_spec(meta.model_spec, self.model, self.version)
        signature = getattr(getattr(request, "model_spec", None), "signature_name", "")
        meta.model_spec.signature_name = signature
        meta.sampling_config.sampling_rate = self.request_log.args.sampling_rate  # type: ignore[union-attr]
        meta.saved_model_tags.extend(self._servable().tags)
        kind = _LOG_KINDS[api]
        getattr(log, kind).request.CopyFrom(request)
        getattr(log, kind).response.CopyFrom(response)
        return log

    async def _predict(self, call: ModelCall, logged: bool) -> Answer:
        servable = self._servable()
        if call.wire is Wire.REST:
            return await self._predict_json(servable, call, logged)
        prepared = dataplane.prepare_predict(servable, call.request, self.check_method_name)
        prepared.outputs = await self._run(prepared, call.deadline)
        payload = dataplane.predict_response_bytes(
            prepared, self.model, self.version, tensor_content=self.tensor_content
        )
        if not logged:
            return payload, None
        return payload, lambda: (call.request, predict_pb2.PredictResponse.FromString(payload))

    async def _predict_json(self, servable: LoadedModel, call: ModelCall, logged: bool) -> Answer:
        """REST Predict: the JSON document's tensors decoded against the signature, TF Serving's
        JSON out (``compat.json_codec``)."""
        doc = call.request
        requested = json_codec.signature_name(doc)
        name = dataplane.signature_name(requested)
        if name not in servable.signatures:  # REST's wording (http_rest_api_handler.cc)
            raise InvalidArgument(f'Serving signature name: "{name}" not found in signature def')
        inputs, row_format = json_codec.decode_predict_request(doc, servable.signatures[name])
        prepared = dataplane.prepare_predict_arrays(
            servable, requested, inputs, check_method_name=self.check_method_name
        )
        prepared.outputs = await self._run(prepared, call.deadline)
        ordered = {a: prepared.outputs[a] for a in prepared.output_aliases}
        payload = json_codec.encode_predict_response(ordered, row_format).encode()
        if not logged:
            return payload, None
        return payload, functools.partial(self._predict_record, prepared)

    def _predict_record(self, prepared: dataplane.PredictCall) -> tuple[Any, Any]:
        """A Predict that did not come as a PredictRequest (REST's JSON, V2's ModelInfer) as
        the PredictRequest and PredictResponse it stands for, for the request log."""
        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model
        request.model_spec.signature_name = prepared.signature_name
        for alias, value in prepared.inputs.items():
            request.inputs[alias].CopyFrom(tensors.from_numpy(np.asarray(value)))
        return request, dataplane.finish_predict(prepared, self.model, self.version)

    async def _model_infer(self, call: ModelCall, logged: bool) -> Answer:
        """V2 ModelInfer: the same Predict path (signature, batching queue, deadline), its
        tensors decoded from and encoded into the protocol's messages
        (``compat.open_inference``); the answer is raw when the request was."""
        servable = self._servable()
        request = call.request
        inputs = open_inference.decode_inputs(request)
        prepared = dataplane.prepare_predict_arrays(
            servable,
            call.spec.signature_name,
            inputs,
            open_inference.output_names(request),
            check_method_name=self.check_method_name,
        )
        open_inference.check_dtypes(inputs, prepared.signature)
        prepared.outputs = await self._run(prepared, call.deadline)
        response = open_inference.pb.ModelInferResponse(
            model_name=self.model, model_version=str(self.version), id=request.id
        )
        open_inference.encode_outputs(
            response,
            {a: prepared.outputs[a] for a in prepared.output_aliases},
            # REST's translation reads raw outputs back (compat.open_inference_json)
            raw=bool(request.raw_input_contents) or call.wire is Wire.REST,
        )
        record = functools.partial(self._predict_record, prepared) if logged else None
        return response.SerializeToString(), record

    async def _model_metadata(self, call: ModelCall, logged: bool) -> Answer:
        """V2 ModelMetadata of the default signature (``serving_default``); the versions are
        this one (the serving replica, which knows them all, fills in the rest)."""
        servable = self._servable()
        signature = servable.signatures.get(dataplane.DEFAULT_SIGNATURE)
        if signature is None:
            raise InvalidArgument(
                f"Model {self.model} has no {dataplane.DEFAULT_SIGNATURE} signature to describe"
            )
        response = open_inference.model_metadata(self.model, [self.version], signature)
        return response.SerializeToString(), None

    async def _metadata(self, call: ModelCall, logged: bool) -> Answer:
        """GetModelMetadata; REST asks for the message too (``json_codec.metadata_json`` prints
        it)."""
        response = dataplane.metadata(self._servable(), call.request, self.model, self.version)
        return response.SerializeToString(), None

    async def _classify(self, call: ModelCall, logged: bool) -> Answer:
        response = await self._offload(inference.classify, call)
        record = (lambda: (call.request, response)) if logged else None
        if call.wire is Wire.REST:
            return json_codec.encode_classify_response(response.result).encode(), record
        return response.SerializeToString(), record

    async def _regress(self, call: ModelCall, logged: bool) -> Answer:
        response = await self._offload(inference.regress, call)
        record = (lambda: (call.request, response)) if logged else None
        if call.wire is Wire.REST:
            return json_codec.encode_regress_response(response.result).encode(), record
        return response.SerializeToString(), record

    async def _multi_inference(self, call: ModelCall, logged: bool) -> Answer:
        response = await self._offload(inference.multi_inference, call)
        return response.SerializeToString(), (lambda: (call.request, response)) if logged else None

    async def _offload(self, fn: Callable[..., Any], call: ModelCall) -> Any:
        """Classify, Regress and MultiInference run whole in the model's pool."""
        check_deadline(call.deadline)
        servable = self._servable()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool,
            functools.partial(
                fn,
                servable,
                call.request,
                self.model,
                self.version,
                check_method_name=self.check_method_name,
            ),
        )

    def __del__(self) -> None:
        if getattr(self, "servable", None) is not None:
            self.servable.close()  # type: ignore[union-attr]
        if getattr(self, "_local", None) is not None:
            self._store.release(self._local)  # type: ignore[arg-type]


def check_deadline(deadline: float | None) -> None:
    """A request whose caller has given up is not run (TF Serving answers the same)."""
    if deadline is not None and time.time() >= deadline:
        raise DeadlineExceeded("Deadline Exceeded")


Answer = tuple[bytes, Callable[[], tuple[Any, Any]] | None]
"""A handler's encoded response and, when the call is logged, what gives its (request,
response) messages for the request log."""

_LOG_KINDS = {
    Api.PREDICT: "predict_log",
    Api.CLASSIFY: "classify_log",
    Api.REGRESS: "regress_log",
    Api.MULTI_INFERENCE: "multi_inference_log",
    Api.MODEL_INFER: "predict_log",
}
"""The ``PredictionLog`` field of each logged API (GetModelMetadata is not logged)."""

_HANDLERS: dict[Api, Callable[[ModelVersion, ModelCall, bool], Awaitable[Answer]]] = {
    Api.PREDICT: ModelVersion._predict,
    Api.CLASSIFY: ModelVersion._classify,
    Api.REGRESS: ModelVersion._regress,
    Api.METADATA: ModelVersion._metadata,
    Api.MULTI_INFERENCE: ModelVersion._multi_inference,
    Api.MODEL_INFER: ModelVersion._model_infer,
    Api.MODEL_METADATA: ModelVersion._model_metadata,
}


@functools.cache
def freeze_once() -> None:
    """Before a process loads its first version: everything alive then (TensorFlow's modules,
    imported here first, hundreds of thousands of objects) moves out of the garbage collector's
    sight (``gc.freeze``). Every collection used to walk them all, and parsing a big nested REST
    body (many collections) was several times slower with them (measured as in the README's
    "Benchmark"). No version is frozen, so an unloaded version's cycles are freed (frozen after
    its load, the first version's graph stayed in memory for the process's life)."""
    import tensorflow  # noqa: F401  (``compat.protos`` does not import it)

    gc.collect()
    gc.freeze()
