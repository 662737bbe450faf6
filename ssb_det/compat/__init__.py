"""Every Detectron2-version compatibility measure of ssb_det, at run time.

The install-time measures (the offline fallback of Detectron2 v0.6 without its C++
extension) are in ``install_detectron2.py`` beside this file; together these two files are
the only places that know about Detectron2 version differences. Code elsewhere calls the
helpers below instead of testing versions itself.
"""
import importlib
import logging
import sys
from datetime import timedelta

import PIL.Image
import torch

__all__ = [
    "apply_runtime_patches",
    "coco_evaluator",
    "detectron2_has_cpp_extension",
    "detectron2_version",
    "launch",
]

logger = logging.getLogger(__name__)


# The one Detectron2 module that reads PIL's removed ``Image.LINEAR`` (v0.6, at import time).
_PIL_LINEAR_READER = "detectron2.data.transforms.transform"


def apply_runtime_patches():
    """Idempotent fixes that must run before ``detectron2.data`` is imported.

    - Pillow >= 10 removed ``Image.LINEAR`` (an alias of ``BILINEAR``). Detectron2 v0.6 reads
      it once, as a default argument in ``detectron2/data/transforms/transform.py``, when
      that module is imported, so an official v0.6 install fails to import with a new Pillow
      (Detectron2 after v0.6, and this project's offline v0.6 install, use ``BILINEAR``).
      The alias exists only while that module is imported and is removed afterwards: the
      rest of the process, user code included, sees Pillow exactly as installed.
    """
    if hasattr(PIL.Image, "LINEAR") or _PIL_LINEAR_READER in sys.modules:
        return
    PIL.Image.LINEAR = PIL.Image.BILINEAR
    try:
        importlib.import_module(_PIL_LINEAR_READER)
    finally:
        del PIL.Image.LINEAR


def detectron2_version() -> str:
    import detectron2

    return detectron2.__version__


def detectron2_has_cpp_extension() -> bool:
    """False for the Python-only fallback install (its ``_C`` is a stand-in) or a broken build."""
    try:
        c_ext = importlib.import_module("detectron2._C")
    except ImportError:
        return False
    return not getattr(c_ext, "SSB_DET_STANDIN", False)


def coco_evaluator(dataset_name, output_dir=None, *, tasks=None, distributed=True, **kwargs):
    """``COCOEvaluator`` using pycocotools' own COCOeval (``use_fast_impl=False``).

    The fast C++ COCOeval is not available in the Python-only install, and the two give the
    same numbers; ``use_fast_impl`` exists in v0.6 and in current Detectron2.

    Args:
        dataset_name (str): a registered dataset with COCO-format metadata.
        output_dir (str or None): where ``coco_instances_results.json`` is written.
        tasks (tuple[str] or None): e.g. ``("bbox", "segm")``; None infers from the config.
        distributed (bool): gather results from all workers.
        kwargs: other ``COCOEvaluator`` arguments.
    """
    from detectron2.evaluation import COCOEvaluator

    return COCOEvaluator(dataset_name, tasks=tasks, distributed=distributed,
                         output_dir=output_dir, use_fast_impl=False, **kwargs)


def _cpu_aware_create_ddp_model(create_ddp_model):
    def wrapped(model, *, fp16_compression=False, **kwargs):
        # Detectron2 passes device_ids=[local_rank], which DistributedDataParallel refuses for
        # a CPU module; a CPU module takes device_ids=None.
        if all(p.device.type == "cpu" for p in model.parameters()):
            kwargs.setdefault("device_ids", None)
        return create_ddp_model(model, fp16_compression=fp16_compression, **kwargs)

    wrapped.__wrapped__ = create_ddp_model
    return wrapped


def _cpu_distributed_worker(local_rank, main_func, world_size, procs_per_machine, machine_rank,
                            dist_url, args, timeout):
    import torch.distributed as dist
    import detectron2.engine.defaults as d2_defaults
    from detectron2.utils import comm

    rank = machine_rank * procs_per_machine + local_rank
    dist.init_process_group("gloo", init_method=dist_url, world_size=world_size, rank=rank,
                            timeout=timeout)
    if hasattr(comm, "create_local_process_group"):  # Detectron2 after v0.6
        comm.create_local_process_group(procs_per_machine)
    else:  # v0.6: the same local group, set the way its own worker does
        for i in range(world_size // procs_per_machine):
            group = dist.new_group(list(range(i * procs_per_machine, (i + 1) * procs_per_machine)))
            if i == machine_rank:
                comm._LOCAL_PROCESS_GROUP = group
    if not hasattr(d2_defaults.create_ddp_model, "__wrapped__"):
        d2_defaults.create_ddp_model = _cpu_aware_create_ddp_model(d2_defaults.create_ddp_model)
    comm.synchronize()
    main_func(*args)


def launch(main_func, num_gpus_per_machine, num_machines=1, machine_rank=0, dist_url=None,
           args=(), timeout=timedelta(minutes=30)):
    """Detectron2's ``launch``, which also runs multi-process training on CPU-only machines.

    With CUDA (or a single process) this is ``detectron2.engine.launch`` itself. Without
    CUDA and with several processes, Detectron2 v0.6 asserts CUDA and uses NCCL, and every
    version's ``create_ddp_model`` passes ``device_ids`` that DDP refuses for a CPU model:
    here the workers use the gloo backend and CPU-style DDP instead, with the same process
    and local-group layout as Detectron2's own workers.

    Args:
        main_func: function run in every process with ``*args``.
        num_gpus_per_machine (int): processes per machine (``--num-gpus``).
        num_machines (int): machines.
        machine_rank (int): this machine's rank.
        dist_url (str): ``tcp://host:port``, or ``"auto"`` for a free local port.
        args (tuple): arguments of ``main_func``.
        timeout (timedelta): process-group timeout.
    """
    from detectron2.engine import launch as d2_launch

    world_size = num_machines * num_gpus_per_machine
    if world_size == 1 or torch.cuda.is_available():
        return d2_launch(main_func, num_gpus_per_machine, num_machines=num_machines,
                         machine_rank=machine_rank, dist_url=dist_url, args=args,
                         timeout=timeout)
    import torch.multiprocessing as mp
    from detectron2.engine.launch import _find_free_port

    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError("dist_url='auto' works on one machine only; give tcp://HOST:PORT")
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    logger.info(f"No CUDA: {world_size} CPU processes with the gloo backend at {dist_url}")
    mp.spawn(_cpu_distributed_worker, nprocs=num_gpus_per_machine, daemon=False,
             args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args,
                   timeout))
