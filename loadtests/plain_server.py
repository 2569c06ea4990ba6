"""The leanest Python TF Serving server: ``grpc.aio``, Predict only, the model run inline.

The benchmark's baseline for serving overhead: the same per-request work as ray-tfserving
(``compat.dataplane``: validate, decode with ``compat.tensors``, ``Servable.run``, encode with
typed fields) with nothing between the socket and the model but grpc.aio and a thread pool.

    python -m loadtests.plain_server --port 0 --model half_plus_two=/path/to/base_path

prints ``{"port": N}`` on stdout once every model is loaded and the port is bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from compat import dataplane
from compat.errors import NotFound, ServingError
from compat.protos import predict_pb2
from compat.servable import Servable, SessionOptions

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"


def newest_version(base_path: str | os.PathLike[str]) -> tuple[int, Path]:
    """The highest numeric version directory under ``base_path``."""
    versions = [(int(p.name), p) for p in Path(base_path).iterdir() if p.name.isdigit()]
    if not versions:
        raise FileNotFoundError(f"no numeric version directory under {base_path}")
    return max(versions)


class PlainPredictor:
    """Predict over a name -> (version, Servable) table; runs the model in a thread pool."""

    def __init__(self, servables: dict[str, tuple[int, Servable]], workers: int = 4) -> None:
        self._servables = servables
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="plain")

    async def predict(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            request = predict_pb2.PredictRequest.FromString(raw)
            name = request.model_spec.name
            if name not in self._servables:
                raise NotFound(f"Servable not found for request: Latest({name})")
            version, servable = self._servables[name]
            call = dataplane.prepare_predict(servable, request)
            loop = asyncio.get_running_loop()
            call.outputs = await loop.run_in_executor(
                self._pool, servable.run, call.signature, call.inputs, call.output_aliases
            )
            return dataplane.finish_predict(call, name, version).SerializeToString()
        except ServingError as e:
            await context.abort(e.code, e.message)
            raise  # abort raises; this is never reached


async def serve(models: dict[str, str], port: int, options: SessionOptions, workers: int) -> None:
    servables = {}
    for name, base_path in models.items():
        version, path = newest_version(base_path)
        servables[name] = (version, Servable(path, options))
    predictor = PlainPredictor(servables, workers)
    handler = grpc.method_handlers_generic_handler(
        PREDICTION_SERVICE,
        {"Predict": grpc.unary_unary_rpc_method_handler(predictor.predict)},
    )
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20),
        ]
    )
    server.add_generic_rpc_handlers((handler,))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(json.dumps({"port": bound}), flush=True)
    await server.wait_for_termination()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--model", action="append", default=[], help="name=base_path (repeatable)", required=True
    )
    parser.add_argument("--workers", type=int, default=4, help="model-run threads")
    parser.add_argument("--intra_op_parallelism", type=int, default=0)
    parser.add_argument("--inter_op_parallelism", type=int, default=0)
    args = parser.parse_args(argv)
    models = dict(m.split("=", 1) for m in args.model)
    options = SessionOptions(
        intra_op_parallelism=args.intra_op_parallelism,
        inter_op_parallelism=args.inter_op_parallelism,
    )
    asyncio.run(serve(models, args.port, options, args.workers))


if __name__ == "__main__":
    main()
