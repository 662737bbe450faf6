"""Safe checkpoint I/O: atomic saves, and loading that never runs code from a file.

- ``.pth``: ``torch.load(..., weights_only=True)``: tensors and plain containers only.
- ``.pkl`` (Detectron2 / Caffe2 model-zoo format): read with :class:`RestrictedUnpickler`,
  which accepts numpy arrays and plain Python containers and refuses every other global.
- Saves go to a temporary file in the same directory, are fsync'ed, then ``os.replace``'d
  over the target, so a run killed while saving leaves the previous file intact.
"""
import contextlib
import os
import pickle
import uuid
from typing import Any, Dict, Iterator

import torch
from detectron2.checkpoint import DetectionCheckpointer

__all__ = [
    "RestrictedUnpickler",
    "UnsafeCheckpointError",
    "load_pkl",
    "load_pth",
    "load_checkpoint_file",
    "atomic_path",
    "atomic_torch_save",
    "atomic_write_text",
    "SSBCheckpointer",
]


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A pickle asked for a global outside the allow-list."""


# (module, name) pairs a weights pickle may reference: numpy array reconstruction and
# dtypes, and the builtin containers. Nothing that can call arbitrary code.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),  # pickle protocol 5 (Python 3.14's default)
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("builtins", "dict"),
    ("builtins", "list"),
    ("builtins", "tuple"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "int"),
    ("builtins", "float"),
    ("builtins", "complex"),
    ("builtins", "bytes"),
    ("builtins", "bytearray"),
    ("builtins", "str"),
    ("builtins", "bool"),
    ("_codecs", "encode"),  # how Python 2 pickles store byte strings under latin1
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that accepts only numpy arrays and plain containers.

    Args:
        file: a binary file object.
        source (str): the file's name, for error messages.
    """

    def __init__(self, file, *, source: str = "<stream>", **kwargs):
        super().__init__(file, **kwargs)
        self.source = source

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UnsafeCheckpointError(
            f"{self.source}: refusing to unpickle global '{module}.{name}'. Weights files may "
            "contain only arrays and plain containers; anything else can execute code."
        )


def _named_errors(path: str, load):
    """Run ``load()``; re-raise a read/format error with the file's name in the message."""
    try:
        return load()
    except UnsafeCheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError) as e:
        raise type(e)(f"{path}: cannot read checkpoint (truncated or not a weights file?): "
                      f"{e}") from e


def load_pkl(path: str) -> Any:
    """Load a Detectron2/Caffe2-style ``.pkl`` weights file without executing code."""
    with open(path, "rb") as f:
        return _named_errors(path, RestrictedUnpickler(f, source=path, encoding="latin1").load)


def load_pth(path: str) -> Any:
    """Load a ``.pth``/``.pt`` file with ``weights_only=True`` onto the CPU."""
    return _named_errors(path, lambda: torch.load(path, map_location="cpu", weights_only=True))


def load_checkpoint_file(path: str) -> Any:
    """Load ``.pkl`` with :func:`load_pkl`, anything else with :func:`load_pth`."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return load_pkl(path) if path.endswith(".pkl") else load_pth(path)


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """A temporary path beside ``path`` to write to (for writers that take a file name);
    fsync'ed and moved over ``path`` when the block succeeds, removed when it fails."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    # Created as open() creates files (mode 0666 less the umask), unlike mkstemp's 0600.
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _atomic_write(path: str, write) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save`` that leaves either the old or the complete new file, never a torn one."""
    _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str) -> None:
    """Write a small text file atomically."""
    _atomic_write(path, lambda f: f.write(text.encode("utf-8")))


class SSBCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with atomic saves and code-free loading.

    Same constructor as ``DetectionCheckpointer``. ``.pkl`` files go through
    :class:`RestrictedUnpickler` (then Detectron2's usual model-zoo handling), ``.pth`` and
    pycls ``.pyth`` files through ``torch.load(weights_only=True)``.
    """

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_torch_save(data, save_file)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write_text(last_filename_basename, os.path.join(self.save_dir, "last_checkpoint"))

    def resume_or_load(self, path: str, *, resume: bool = True):
        # A resumed run must continue the same model: a checkpoint in OUTPUT_DIR that does
        # not fit is an error (wrong OUTPUT_DIR or changed config), not a partial load.
        self._resuming = resume and self.has_checkpoint()
        try:
            return super().resume_or_load(path, resume=resume)
        finally:
            self._resuming = False

    def _load_model(self, checkpoint: Any):
        incompatible = super()._load_model(checkpoint)
        if getattr(self, "_resuming", False):
            problems = [f"shape of {k}: {a} in the checkpoint, {b} in the model"
                        for k, a, b in incompatible.incorrect_shapes]
            problems += [f"missing in the checkpoint: {k}" for k in incompatible.missing_keys]
            problems += [f"not in the model: {k}" for k in incompatible.unexpected_keys]
            if problems:
                raise ValueError(
                    f"cannot resume from {self.get_checkpoint_file()}: it does not match this "
                    "model (different config or OUTPUT_DIR?). The file is left untouched.\n  "
                    + "\n  ".join(problems))
        return incompatible

    def _load_file(self, filename: str) -> Dict[str, Any]:
        if filename.endswith(".pkl"):
            return self._interpret_pkl(load_pkl(filename))
        loaded = load_pth(filename)
        if filename.endswith(".pyth"):
            # pycls format, interpreted as DetectionCheckpointer does (but loaded safely).
            if "model_state" not in loaded:
                raise KeyError(f"{filename}: a pycls .pyth checkpoint must contain 'model_state'")
            model = {k: v for k, v in loaded["model_state"].items()
                     if not k.endswith("num_batches_tracked")}
            return {"model": model, "__author__": "pycls", "matching_heuristics": True}
        if "model" not in loaded:
            loaded = {"model": loaded}
        return loaded

    def _interpret_pkl(self, data):
        # Same rules as DetectionCheckpointer._load_file for .pkl (v0.6 and current).
        if "model" in data and "__author__" in data:
            self.logger.info(f"Reading a file from '{data['__author__']}'")
            return data
        if "blobs" in data:
            data = data["blobs"]
        data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
        return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}
