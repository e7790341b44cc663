"""Runtime engines: ONNX Runtime sessions, the AsvpPerturb plugins (ONNX Runtime custom op, TensorRT plugin, GPU
kernels in kernels/), TensorRT engines, and the backends behind one interface."""
