"""Serving: a Triton model repository writer, the real Triton server, and a KServe v2 client runner.

    repository.py  write_repository: onnxruntime, tensorrt_plan or python form, config.pbtxt schema-checked
    model_config.py  the ModelConfig protobuf built from the ONNX model, parsed back against Triton's schema
    python_model.py  the python backend's model.py (copied into the repository; runs asvp's ONNX Runtime session)
    env.py         the serving environment (.venv-serve: the nvidia-pytriton wheel's tritonserver, numpy<2)
    server.py      TritonServer: start on 127.0.0.1, free ports, readiness, clean stop (a context manager)
    client.py      TritonRunner: activate() / infer(feed_dict) / deactivate() over HTTP or gRPC (tritonclient)
"""
