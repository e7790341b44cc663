"""`asvp triton-repo MODEL --repo DIR --name NAME`: write a Triton model repository entry (docs/serving.md)."""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from asvp.runtime.serving.constants import DEFAULT_MAX_BATCH, DEFAULT_QUEUE_DELAY_US, FORMS

DESCRIPTION = (
    "Write REPO/NAME/ for Triton Inference Server: config.pbtxt (checked against Triton's own model-config schema), "
    "version 1 with the model, and for the python form a model.py that runs it through asvp's ONNX Runtime session. "
    "Forms: python (any asvp model, plugin mode included; what the nvidia-pytriton server runs), onnxruntime "
    "(clean and subgraph-defended models; the production form in NVIDIA's Triton containers, optionally with the "
    "TensorRT execution accelerator), tensorrt_plan (an asvp build engine, from its sidecar; unverified until a "
    "TensorRT ran it). Batching follows the model: max_batch_size when its batch dim is dynamic, 0 when static. "
    "The defence and fingerprint metadata are recorded as config parameters (never a key).")


class RepoArgs:
    """The repository entry's options -> RepoOptions."""

    def add(self, parser: argparse.ArgumentParser) -> None:
        p = parser.add_argument_group("repository entry")
        p.add_argument("--repo", required=True, metavar="DIR", help="the model repository folder (created if needed)")
        p.add_argument("--name", help="model name in the repository (default: the model file's stem)")
        p.add_argument("--form", choices=FORMS, default=FORMS[0], help=f"backend form (default {FORMS[0]})")
        p.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH,
                       help=f"max_batch_size when the model's batch is dynamic (default {DEFAULT_MAX_BATCH}; 0: off)")
        p.add_argument("--no-dynamic-batching", action="store_true", help="leave Triton's dynamic batcher off")
        p.add_argument("--max-queue-delay-us", type=int, default=DEFAULT_QUEUE_DELAY_US,
                       help=f"dynamic batcher's queue delay in microseconds (default {DEFAULT_QUEUE_DELAY_US})")
        p.add_argument("--instances", type=int, default=1, help="model instances (default 1)")
        p.add_argument("--gpu", action="store_true", help="instance_group KIND_GPU (tensorrt_plan always is)")
        p.add_argument("--max-side", type=int, default=0, help="python form: refuse inputs with H or W above this (4xx)")
        p.add_argument("--threads", type=int, default=0, help="python form: ONNX Runtime threads per instance")
        p.add_argument("--execution-env", metavar="PATH",
                       help="python form: EXECUTION_ENV_PATH (default: the serving environment, .venv-serve; '' "
                            "leaves it out, for a server whose own Python has asvp)")
        p.add_argument("--key-id", help="record this fingerprint key id (the public label `asvp fingerprint` prints)")
        p.add_argument("--source-onnx", metavar="ONNX", help="tensorrt_plan: the ONNX the engine was built from")
        p.add_argument("--force", action="store_true", help="replace an existing REPO/NAME")
        t = parser.add_argument_group("onnxruntime form: TensorRT execution accelerator")
        t.add_argument("--tensorrt", action="store_true", help="add the TensorRT execution-accelerator parameters")
        t.add_argument("--fp16", action="store_true", help="precision_mode FP16")
        t.add_argument("--engine-cache", metavar="DIR", help="ONNX Runtime's TensorRT engine cache folder")
        t.add_argument("--min", metavar="NxCxHxW", help="profile's smallest input shape (as asvp build)")
        t.add_argument("--opt", metavar="NxCxHxW", help="profile's optimal input shape")
        t.add_argument("--max", metavar="NxCxHxW", help="profile's largest input shape")

    @staticmethod
    def parse(a):
        from asvp.runtime.serving.model_config import TensorRTAccel
        from asvp.runtime.serving.repository import RepoOptions

        name = a.name or re.sub(r"[^A-Za-z0-9_.\-]", "_", Path(a.model).name.split(".")[0])
        trt = (TensorRTAccel(precision="FP16" if a.fp16 else "FP32", engine_cache=a.engine_cache,
                             shapes={"min": a.min, "opt": a.opt, "max": a.max}) if a.tensorrt else None)
        return RepoOptions(name=name, form=a.form, max_batch_size=a.max_batch_size,
                           dynamic_batching=not a.no_dynamic_batching, max_queue_delay_us=a.max_queue_delay_us,
                           instances=a.instances, gpu=a.gpu, max_side=a.max_side, threads=a.threads, tensorrt=trt,
                           execution_env=a.execution_env, key_id=a.key_id, source_onnx=a.source_onnx, force=a.force)


def register(sub) -> None:
    s = sub.add_parser("triton-repo", help="write a Triton model repository (python, onnxruntime, tensorrt_plan)",
                       description=DESCRIPTION)
    s.add_argument("model", help="ONNX model (an asvp build engine for --form tensorrt_plan)")
    RepoArgs().add(s)
    s.add_argument("--json", action="store_true", help="machine-readable result")
    s.set_defaults(func=run)


def run(a):
    from asvp import api

    res = api.triton_repo(a.model, a.repo, RepoArgs.parse(a))
    print(json.dumps(res.to_dict(), indent=2) if a.json else "\n".join(res.summary_lines()))
