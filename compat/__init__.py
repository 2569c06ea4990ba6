"""The TensorFlow Serving API, independent of Ray: codecs, errors and the data plane."""
