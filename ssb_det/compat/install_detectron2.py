#!/usr/bin/env python
"""Install Detectron2 into the running Python environment (standard library only).

Order of preference:
  1. an already-installed Detectron2 (nothing is changed);
  2. the official source, ``pip install git+https://github.com/facebookresearch/detectron2``
     (needs GitHub and a C++ toolchain; builds the C++/CUDA extension);
  3. the offline fallback: the PyPI sdist ``pb1-detectron2==0.6``, whose ``detectron2/``
     Python sources are identical to official v0.6 but which ships no C++ sources. It is
     installed without the extension, with the measures listed in ``FALLBACK_PATCHES``.

``--source auto|installed|official|fallback`` (or ``SSB_DETECTRON2_SOURCE``) forces a route.
Every Detectron2 compatibility measure of this project lives in ``ssb_det/compat/``: this
installer (install time) and ``ssb_det/compat/__init__.py`` (run time).
"""
import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request

OFFICIAL_URL = "git+https://github.com/facebookresearch/detectron2.git"
FALLBACK_PROJECT, FALLBACK_FILE = "pb1-detectron2", "pb1-detectron2-0.6.tar.gz"
FALLBACK_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
STANDIN_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "detectron2_C_standin.py")

# What the fallback changes in the sdist, and why (each edit must apply, or we stop).
FALLBACK_PATCHES = [
    # No C++ sources in the sdist: build no extension at all.
    ("setup.py", "ext_modules=get_extensions(),", "ext_modules=[],"),
    # black==21.4b2 does not import with current click; Detectron2 only uses black to pretty
    # print LazyConfig.save output, and catches its absence. Any black will do.
    ("setup.py", '"black==21.4b2",', '"black",'),
    # The distribution is published as pb1-detectron2; call it detectron2 so that
    # `pip show detectron2` and importlib.metadata find it like an official install.
    ("setup.py", 'name="pb1-detectron2",', 'name="detectron2",'),
    # The sdist keeps the model-zoo configs inside detectron2/model_zoo/configs, but its
    # setup.py collects them from a top-level configs/ it does not ship: install them so
    # model_zoo.get_config_file() works.
    ("setup.py", 'package_data={"detectron2.model_zoo": get_model_zoo_configs()},',
     'package_data={"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]},'),
    # Newer pip refuses direct-URL requirements (an extra names panopticapi by URL).
    ("setup.py",
     '"panopticapi @ https://github.com/cocodataset/panopticapi/archive/master.zip",', ""),
    # Pillow 10 removed Image.LINEAR (an alias of BILINEAR). Official Detectron2 after v0.6
    # made the same change.
    ("detectron2/data/transforms/transform.py", "interp=Image.LINEAR", "interp=Image.BILINEAR"),
]


def log(msg):
    print(f"[install_detectron2] {msg}", flush=True)


def pip(*args, timeout=None):
    cmd = [sys.executable, "-m", "pip", *args]
    log("$ " + " ".join(cmd))
    return subprocess.run(cmd, timeout=timeout).returncode


def installed_detectron2():
    """Version string of an importable Detectron2 (checked in a fresh interpreter), or None."""
    code = "import detectron2, detectron2.modeling; print(detectron2.__version__)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return res.stdout.strip() if res.returncode == 0 else None


def github_reachable(timeout=20):
    try:
        res = subprocess.run(
            ["git", "ls-remote", "https://github.com/facebookresearch/detectron2.git", "HEAD"],
            capture_output=True, timeout=timeout,
            env=dict(os.environ, GIT_TERMINAL_PROMPT="0"),
        )
        return res.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def install_official():
    if not github_reachable():
        log("GitHub is not reachable: the official source cannot be fetched")
        return False
    # --no-build-isolation: the build needs the torch that is already installed.
    return pip("install", "--no-build-isolation", OFFICIAL_URL) == 0


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _apply_patches(src):
    for rel, old, new in FALLBACK_PATCHES:
        path = os.path.join(src, rel)
        with open(path) as f:
            text = f.read()
        if old not in text:
            raise RuntimeError(f"fallback patch no longer applies: {old!r} not found in {rel}")
        with open(path, "w") as f:
            f.write(text.replace(old, new))
    shutil.copyfile(STANDIN_SOURCE, os.path.join(src, "detectron2", "_C.py"))


def _download_sdist(dest):
    """Fetch the sdist through the package index pip uses (PEP 503 simple API).

    Not `pip download`: recent pip builds the sdist's metadata first and rejects it for the
    direct-URL dependency in one of its extras.
    """
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    page_url = f"{index}/{FALLBACK_PROJECT}/"
    log(f"fetching {FALLBACK_FILE} via {page_url}")
    with urllib.request.urlopen(page_url, timeout=60) as resp:
        page = resp.read().decode("utf-8", "replace")
    hrefs = [h for h in re.findall(r'href="([^"]+)"', page) if FALLBACK_FILE in h]
    if not hrefs:
        raise RuntimeError(f"{FALLBACK_FILE} is not listed on {page_url}")
    url = urllib.parse.urljoin(page_url, hrefs[0].split("#")[0])
    path = os.path.join(dest, FALLBACK_FILE)
    with urllib.request.urlopen(url, timeout=300) as resp, open(path, "wb") as f:
        shutil.copyfileobj(resp, f)
    digest = _sha256(path)
    if digest != FALLBACK_SHA256:
        raise RuntimeError(f"sha256 of {url} is {digest}, expected {FALLBACK_SHA256}")
    return path


def install_fallback():
    with tempfile.TemporaryDirectory(prefix="ssb_d2_") as tmp:
        try:
            archive = _download_sdist(tmp)
        except (OSError, RuntimeError) as e:
            log(f"could not fetch the Detectron2 v0.6 sdist: {e}")
            return False
        with tarfile.open(archive) as tar:
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(tmp, **kwargs)
        src = os.path.join(tmp, FALLBACK_FILE[: -len(".tar.gz")])
        _apply_patches(src)
        return pip("install", "--no-build-isolation", src) == 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=os.environ.get("SSB_DETECTRON2_SOURCE", "auto"),
                        choices=["auto", "installed", "official", "fallback"])
    args = parser.parse_args(argv)

    version = installed_detectron2()
    if version and args.source in ("auto", "installed"):
        log(f"Detectron2 {version} is already installed: keeping it")
        return 0
    if args.source == "installed":
        log("no importable Detectron2 in this environment")
        return 1
    if args.source in ("auto", "official"):
        if install_official() and installed_detectron2():
            log(f"installed the official Detectron2 {installed_detectron2()}")
            return 0
        if args.source == "official":
            log("the official Detectron2 could not be installed")
            return 1
        log("falling back to the PyPI sdist of Detectron2 v0.6 without its C++ extension")
    if install_fallback():
        version = installed_detectron2()
        if version:
            log(f"installed Detectron2 {version} (Python only; C++ ops raise a clear error)")
            return 0
    log("FAILED: no Detectron2 could be installed. See README.md, 'Installation'.")
    return 1


if __name__ == "__main__":
    sys.exit(main())
