"""The package's surface: what ``import ssb_det`` changes outside it, and its ``__all__``s."""
import importlib
import os
import pkgutil
import subprocess
import sys
import textwrap
import types

import PIL
import PIL.Image
import pytest

import ssb_det

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Serves detectron2/data/transforms/transform.py as official Detectron2 v0.6 has it (its
# default ``interp=Image.LINEAR``; the offline install here is patched to BILINEAR).
OFFICIAL_V06_TRANSFORM = textwrap.dedent("""
    import importlib.machinery, importlib.util, sys

    NAME = "detectron2.data.transforms.transform"

    class V06Loader(importlib.machinery.SourceFileLoader):
        def get_code(self, fullname):
            source = self.get_data(self.path).replace(
                b"interp=Image.BILINEAR, fill=0", b"interp=Image.LINEAR, fill=0")
            assert b"interp=Image.LINEAR" in source
            return compile(source, self.path, "exec")

    class V06Finder:
        @staticmethod
        def find_spec(name, path, target=None):
            if name != NAME:
                return None
            origin = importlib.machinery.PathFinder.find_spec(name, path).origin
            return importlib.util.spec_from_file_location(name, origin,
                                                          loader=V06Loader(name, origin))

    sys.meta_path.insert(0, V06Finder)
""")


def run_python(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=300)


@pytest.mark.skipif(int(PIL.__version__.split(".")[0]) < 10,
                    reason="Pillow < 10 still has Image.LINEAR")
def test_official_v06_imports_and_pillow_is_left_as_installed():
    # Without ssb_det, official v0.6 does not import with this Pillow (the simulation is real).
    plain = run_python(OFFICIAL_V06_TRANSFORM + "import detectron2.data\n")
    assert plain.returncode != 0 and "LINEAR" in plain.stderr
    # ssb_det makes it import, and leaves Pillow without the alias for everyone else.
    proc = run_python(OFFICIAL_V06_TRANSFORM + textwrap.dedent("""
        import inspect, PIL.Image, ssb_det
        from detectron2.data.transforms import ExtentTransform
        default = inspect.signature(ExtentTransform.__init__).parameters["interp"].default
        assert default == PIL.Image.BILINEAR, default
        print("LINEAR" if hasattr(PIL.Image, "LINEAR") else "no LINEAR")
    """))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "no LINEAR"
    assert not hasattr(PIL.Image, "LINEAR")  # in this process too


# ssb_det.layers is being split into one module per idea (issue 12); its __init__ follows then.
PACKAGES = [m.name for m in pkgutil.walk_packages(ssb_det.__path__, "ssb_det.") if m.ispkg
            and m.name != "ssb_det.layers"]


@pytest.mark.parametrize("name", ["ssb_det"] + PACKAGES)
def test_all_lists_public_objects_not_submodules(name):
    package = importlib.import_module(name)
    names = getattr(package, "__all__", [])
    assert sorted(set(names)) == sorted(names), "duplicates"
    assert [n for n in names if not hasattr(package, n)] == []
    assert [n for n in names if isinstance(getattr(package, n), types.ModuleType)] == []


def test_import_registers_the_backbones_and_no_meta_architecture():
    # The study's meta-architectures live in projects/SSBStudy, which registers them itself;
    # the library adds backbones only. Fresh interpreters: this one may have run the study's
    # tests.
    code = textwrap.dedent("""
        from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY
        before = ({k for k, _ in META_ARCH_REGISTRY}, {k for k, _ in BACKBONE_REGISTRY})
        import ssb_det
        print(sorted({k for k, _ in META_ARCH_REGISTRY} - before[0]))
        print(sorted({k for k, _ in BACKBONE_REGISTRY} - before[1]))
    """)
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta, backbones = proc.stdout.strip().splitlines()[-2:]
    assert meta == "[]"
    assert backbones == str(sorted(["build_ssb_resnet_backbone", "build_ssb_resnet_fpn_backbone",
                                    "build_ssb_retinanet_resnet_fpn_backbone"]))
