"""One tensor of every Open Inference Protocol datatype, with edge values (extremes of each
integer type, the largest finite floats, empty and non-UTF-8 bytes): shared by the codec's unit
tests and the live comparison with TF Serving's API."""

import ml_dtypes
import numpy as np

SAMPLES: dict[str, np.ndarray] = {
    "BOOL": np.array([[True, False, True]]),
    "UINT8": np.array([[0, 7, 255]], np.uint8),
    "UINT16": np.array([[0, 7, 65535]], np.uint16),
    "UINT32": np.array([[0, 7, 2**32 - 1]], np.uint32),
    "UINT64": np.array([[0, 7, 2**64 - 1]], np.uint64),
    "INT8": np.array([[-128, 0, 127]], np.int8),
    "INT16": np.array([[-(2**15), 0, 2**15 - 1]], np.int16),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1]], np.int32),
    "INT64": np.array([[-(2**63), 0, 2**63 - 1]], np.int64),
    "FP16": np.array([[-1.5, 0.0, 65504.0]], np.float16),
    "FP32": np.array([[-1.5, 0.0, 3.4e38]], np.float32),
    "FP64": np.array([[-1.5, 0.0, 1e308]], np.float64),
    "BF16": np.array([[-1.5, 0.0, 3.0]], ml_dtypes.bfloat16),
    "BYTES": np.array([[b"", b"\x00\xff", "é".encode()]], dtype=object),
}
