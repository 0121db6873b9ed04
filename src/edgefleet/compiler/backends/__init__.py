"""Compiler back-ends: an ONNX (or ``.tflite``) model -> a candidate artifact for one runtime.

Each engine has a module here (``onnxruntime``, ``openvino``, ``tvm`` with ``tvm_tuning``, ``litert``)
whose builder the runtime registry names (:data:`edgefleet.runtimes.base.RUNTIMES`); each imports
its engine lazily, and none imports another engine's module (an import-linter contract).
"""
