"""ONNX: export kiln graphs for other runtimes (`export.py`) and run ONNX models through kiln
(`backend.py`, the `onnx.backend` interface over `frontend/onnx_import.py`)."""
