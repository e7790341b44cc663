"""What `asvp validate` runs on, decided before any model runs: the task (from --task and the models'
metadata), the images (the task's held-out pairs, or `--images DIR` with DIR/input and DIR/target; see
runtime/evaluation/images.py), and the defended nodes that can be measured (tap outputs, tensors present in the
clean model). Bad input fails here, in one line, with nothing written.
"""
from __future__ import annotations

from dataclasses import dataclass

from asvp.errors import AsvpError
from asvp.graph_passes.metadata import read_defence, read_export
from asvp.onnx_utils import get_metadata, image_io, load_model
from asvp.runtime.engines.sidecar import is_engine_path
from asvp.runtime.evaluation.images import check_samples, heldout_samples, load_pairs
from asvp.tasks import TASKS, get_task


def resolve_task(task: str | None, clean_meta: dict, defended_meta: dict, have_images: bool):
    """(task name, TaskSpec or None, scale, size_multiple) from --task and the models' metadata."""
    clean_info = read_export(clean_meta)
    d_task = read_export(defended_meta).task
    recorded = clean_info.task or d_task
    if recorded and d_task and d_task != recorded:
        raise AsvpError(f"CLEAN is a {recorded!r} model but DEFENDED is a {d_task!r} model")
    if task is not None and task not in TASKS and task != recorded:
        get_task(task)  # raises the one-line "unknown task" error listing the bundled tasks
    if task is None:
        if not recorded:
            raise AsvpError("no --task given and the clean model records no asvp.task metadata; pass --task")
        task = recorded
    elif recorded in TASKS and task != recorded:
        raise AsvpError(f"--task {task} does not match the clean model, which was exported for task {recorded!r}")
    if task in TASKS:
        spec = get_task(task)
        if clean_info.scale is not None and clean_info.scale != spec.scale:
            raise AsvpError(f"the clean model upscales x{clean_info.scale} but task {task} is x{spec.scale}")
        return task, spec, spec.scale, spec.size_multiple
    if task != recorded:
        get_task(task)  # raises the one-line "unknown task" error listing the bundled tasks
    if not have_images:
        raise AsvpError(f"the models were exported for task {task!r}, which has no bundled held-out images: "
                        "give --images DIR (DIR/input/*, DIR/target/*)")
    # a user model exported with its own task label: geometry from its metadata, images from --images
    return task, None, clean_info.scale or 1, clean_info.size_multiple


@dataclass
class ValidationPlan:
    """Everything validate decides before any model runs (so bad input fails fast, with nothing written)."""

    clean_model: object  # onnx.ModelProto
    io: tuple  # (input name, clean output name, defended output name)
    info: object  # graph_passes.metadata.DefenceInfo
    task: str
    spec: object  # TaskSpec or None
    scale: int
    samples: list
    source: str
    taps: list  # defended nodes with a tap output
    feat_nodes: list  # defended nodes whose tensor exists in the clean model
    notes: list


def plan_validation(clean, defended, task, images, heldout_size) -> ValidationPlan:
    """Read both models, resolve the task and the images, and decide what can be measured at the defended
    nodes; every refusal is one AsvpError, before any model runs."""
    for p in (clean, defended):
        if is_engine_path(p):
            raise AsvpError(f"{p}: validate takes ONNX models (metadata, node tensors); with --backend tensorrt "
                            "it builds their engines itself")
    cm, dm = load_model(clean), load_model(defended)
    (in_c, out_c), (in_d, out_d) = image_io(cm), image_io(dm)
    if in_c != in_d:
        raise AsvpError(f"the models' inputs differ: clean {in_c!r}, defended {in_d!r}")
    meta_c, meta_d = get_metadata(cm), get_metadata(dm)
    info = read_defence(meta_d)
    task, spec, scale, mult = resolve_task(task, meta_c, meta_d, images is not None)
    if images is not None:
        samples, source = load_pairs(images), str(images)
    else:
        if spec is None:
            raise AsvpError(f"task {task!r} has no bundled held-out images; give --images DIR")
        samples, source = heldout_samples(spec, heldout_size), f"heldout:{heldout_size}"
    check_samples(samples, scale, mult)

    notes = []
    d_outputs = [o.name for o in dm.graph.output]
    taps = info.taps
    for n in taps:
        if n.tap_output not in d_outputs:
            raise AsvpError(f"the defended model's metadata names tap output {n.tap_output!r}, which is not a graph output")
    if info.placement == "tap" and info.nodes and not taps:
        notes.append("tap placement but asvp.nodes names no tap outputs: tap perturbation not measured")
    clean_tensors = {o for node in cm.graph.node for o in node.output}
    feat_nodes = [n for n in info.nodes if n.tensor in clean_tensors]
    for n in info.nodes:
        if n.tensor not in clean_tensors:
            notes.append(f"defended node tensor {n.tensor!r} is not in the clean model: no spectrum/tap measure there")
    if info.nodes and info.config is None:
        notes.append("the defended model records no asvp.config: spectrum 'after' and reference error not computed")
    if info.config is not None and info.config.keyed:
        notes.append(f"variant {info.config.variant} (docs/variants.md): its reference needs the key, which the model "
                     "does not record: spectrum 'after' and reference error not computed")
    if not info.defended:
        notes.append("DEFENDED carries no asvp.defended metadata (not written by `asvp defend`?)")
    return ValidationPlan(cm, (in_c, out_c, out_d), info, task, spec, scale, samples, source, taps, feat_nodes, notes)
