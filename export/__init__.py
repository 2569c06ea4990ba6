"""Build and export the default model: a small DeepLab-v3-style segmenter as a SavedModel.

Modules (import them directly; this package keeps its own import light):

* :mod:`export.synthetic` - deterministic synthetic segmentation images (numpy only).
* :mod:`export.deeplab` - the Keras network, its training loop and ``mean_iou``.
* :mod:`export.savedmodel` - versioned, atomic SavedModel export with TF Serving signatures.
* :mod:`export.show` - ``saved_model_cli show``-style listing of any SavedModel's signatures.

Command line: ``python -m export --base-path models/deeplab --version 1`` and
``python -m export show --dir PATH --all``.
"""
