"""One SavedModel version, its signatures, batching and warmup: held by each serving replica
(``serve_app.ingress``), or the model-version deployment of a model in deployments of its own.

A replica loads its version in ``__init__`` (retrying a bounded number of times; a version in an
object store is first downloaded into the node's cache, ``serve_app.store``), replays the
version's warmup file, and only then reports healthy. A version that cannot load does not crash
the replica (that would fail the whole Serve application): it keeps the error, answers every
call with it, and the version manager reads it, marks the version END with that error and never
routes to it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from compat import dataplane, inference, json_codec
from compat.errors import DeadlineExceeded, InvalidArgument, ServingError, Unavailable
from compat.protos import (
    classification_pb2,
    get_model_metadata_pb2,
    inference_pb2,
    predict_pb2,
    regression_pb2,
)
from compat.servable import Servable, SessionOptions
from compat.warmup import replay_warmup
from serve_app import metrics, store
from serve_app.args import BatchingArgs
from serve_app.batching import BatchScheduler, batchable
from serve_app.replies import Reply

logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class LoadState:
    """What the version manager needs to know about a replica's load."""

    ok: bool
    message: str = ""
    load_seconds: float = 0.0


class ModelVersion:
    """Serves one (model, version). Methods take a parsed request (or
    its bytes) and return ``Reply``."""

    def __init__(
        self,
        model: str,
        version: int,
        path: str,
        session: dict[str, Any],
        warmup: bool = True,
        max_load_retries: int = 0,
        check_method_name: bool = False,
    ) -> None:
        self.model = model
        self.version = version
        self.check_method_name = check_method_name
        self.servable: Servable | None = None
        self.error: ServingError | None = None
        self.batching = BatchingArgs()
        self._pool = self._make_pool(self.batching)
        self._batches = BatchScheduler(
            self._servable,
            self._pool,
            self.batching,
            functools.partial(metrics.record_batch, model, version),
        )
        started = time.monotonic()
        for attempt in range(max_load_retries + 1):
            try:
                local = str(store.fetch(path)) if store.is_remote(path) else path
                self.servable = Servable(local, SessionOptions(**session))
                if warmup:
                    replay_warmup(self.servable, local, model, version)
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
        metrics.record_load(model, version, self.servable is not None, self.load_seconds)
        if self.servable is not None:
            logger.info("Loaded %s version %s in %.2fs", model, version, self.load_seconds)

    # --- lifecycle -------------------------------------------------------------------------

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Batching knobs change at runtime without reloading the model."""
        self.batching = BatchingArgs(**config.get("batching", {}))
        if self.batching.num_batch_threads > self._pool_size:
            old, self._pool = self._pool, self._make_pool(self.batching)
            self._batches.pool = self._pool
            old.shutdown(wait=False)  # what it runs finishes
        self._batches.configure(self.batching)

    def _make_pool(self, knobs: BatchingArgs) -> ThreadPoolExecutor:
        """Model runs happen here, off the event loop: at least one thread per batch thread."""
        self._pool_size = max(4, knobs.num_batch_threads)
        return ThreadPoolExecutor(self._pool_size, f"{self.model}-{self.version}")

    def load_state(self) -> LoadState:
        if self.error is not None:
            return LoadState(False, self.error.message, self.load_seconds)
        return LoadState(True, "", self.load_seconds)

    def _servable(self) -> Servable:
        if self.servable is None:
            assert self.error is not None
            raise self.error
        return self.servable

    # --- running ----------------------------------------------------------------------------

    async def _run(self, call: dataplane.PredictCall, deadline: float | None) -> Any:
        check_deadline(deadline)
        if self.batching.enabled:
            call.deadline = deadline
            if batchable(call):
                return await self._batches.submit(call)
        servable = self._servable()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, servable.run, call.signature, call.inputs, call.output_aliases
        )

    async def _guard(self, work) -> Reply:  # type: ignore[no-untyped-def]
        try:
            return Reply(payload=await work())
        except ServingError as e:
            return Reply.error(e)
        except Exception as e:  # never let an exception escape to Ray
            logger.exception("Unexpected error in %s version %s", self.model, self.version)
            return Reply(code=13, message=f"{type(e).__name__}: {e}")

    # --- gRPC -------------------------------------------------------------------------------

    async def predict(self, raw: Any, deadline: float | None = None) -> Reply:
        async def work() -> bytes:
            request = _parsed(predict_pb2.PredictRequest, raw)
            call = dataplane.prepare_predict(self._servable(), request, self.check_method_name)
            result = await self._run(call, deadline)
            if isinstance(result, ServingError):
                raise result
            call.outputs = result
            return dataplane.finish_predict(call, self.model, self.version).SerializeToString()

        return await self._guard(work)

    async def metadata(self, raw: Any, deadline: float | None = None) -> Reply:
        async def work() -> bytes:
            request = _parsed(get_model_metadata_pb2.GetModelMetadataRequest, raw)
            response = dataplane.metadata(self._servable(), request, self.model, self.version)
            return response.SerializeToString()

        return await self._guard(work)

    async def classify(self, raw: Any, deadline: float | None = None) -> Reply:
        async def work() -> bytes:
            request = _parsed(classification_pb2.ClassificationRequest, raw)
            response = await self._offload(
                inference.classify, self._servable(), request, self.model, self.version
            )
            return response.SerializeToString()

        return await self._guard(work)

    async def regress(self, raw: Any, deadline: float | None = None) -> Reply:
        async def work() -> bytes:
            request = _parsed(regression_pb2.RegressionRequest, raw)
            response = await self._offload(
                inference.regress, self._servable(), request, self.model, self.version
            )
            return response.SerializeToString()

        return await self._guard(work)

    async def multi_inference(self, raw: Any, deadline: float | None = None) -> Reply:
        async def work() -> bytes:
            request = _parsed(inference_pb2.MultiInferenceRequest, raw)
            response = await self._offload(
                inference.multi_inference, self._servable(), request, self.model, self.version
            )
            return response.SerializeToString()

        return await self._guard(work)

    async def _offload(self, fn, *args):  # type: ignore[no-untyped-def]
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, functools.partial(fn, *args, check_method_name=self.check_method_name)
        )

    # --- REST -------------------------------------------------------------------------------

    async def rest(self, verb: str, body: bytes, deadline: float | None = None) -> Reply:
        """``:predict``, ``:classify`` and ``:regress`` with TF Serving's JSON in and out."""

        async def work() -> bytes:
            servable = self._servable()
            doc = json_codec.parse_json(body)
            requested = json_codec.signature_name(doc)
            if verb == "predict":
                name = dataplane.signature_name(requested)
                if name not in servable.signatures:  # REST's wording (http_rest_api_handler.cc)
                    raise InvalidArgument(
                        f'Serving signature name: "{name}" not found in signature def'
                    )
                signature = servable.signatures[name]
                inputs, row_format = json_codec.decode_predict_request(doc, signature)
                call = dataplane.prepare_predict_arrays(
                    servable, requested, inputs, check_method_name=self.check_method_name
                )
                result = await self._run(call, deadline)
                if isinstance(result, ServingError):
                    raise result
                ordered = {a: result[a] for a in call.output_aliases}
                return json_codec.encode_predict_response(ordered, row_format).encode()
            inputs_proto = json_codec.decode_examples_request(doc)
            if verb == "classify":
                creq = classification_pb2.ClassificationRequest(input=inputs_proto)
                creq.model_spec.signature_name = requested
                cresp = await self._offload(
                    inference.classify, servable, creq, self.model, self.version
                )
                return json_codec.encode_classify_response(cresp.result).encode()
            rreq = regression_pb2.RegressionRequest(input=inputs_proto)
            rreq.model_spec.signature_name = requested
            rresp = await self._offload(inference.regress, servable, rreq, self.model, self.version)
            return json_codec.encode_regress_response(rresp.result).encode()

        return await self._guard(work)

    def __del__(self) -> None:
        if getattr(self, "servable", None) is not None:
            self.servable.close()  # type: ignore[union-attr]


def _parsed(message_type: Any, request: Any) -> Any:
    """The request as a message: parsed by the serving replica already (co-located), or its
    bytes (sent to this version's own deployment)."""
    return message_type.FromString(request) if isinstance(request, bytes) else request


def check_deadline(deadline: float | None) -> None:
    """A request whose caller has given up is not run (TF Serving answers the same)."""
    if deadline is not None and time.time() >= deadline:
        raise DeadlineExceeded("Deadline Exceeded")
