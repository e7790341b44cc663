"""Runtime engines: ONNX Runtime sessions, the AsvpPerturb plugins, TensorRT engines, backends behind one interface."""
