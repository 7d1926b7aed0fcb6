"""A real Triton Inference Server for the tests: the `tritonserver` binary and Python backend that
the nvidia-pytriton wheel carries, started on 127.0.0.1 (free port) with the Python environment of
the Triton image deploy/compose.yaml runs (deploy/triton.Dockerfile).

That image is the official one, whose Python has numpy < 2 and nothing else the models import, plus
what deploy/triton.Dockerfile pip-installs (Pillow). The first use prepares a kit in the venv
(`<venv>/triton-kit-<hash of its packages>`, once, with pip): a venv of its own whose site-packages
hold the wheel, numpy < 2 and the Dockerfile's packages, so a preprocessing model that imports
something the image lacks fails here as it would there; the project venv's Pillow is not on its
path. One package comes from the project venv, through a .pth line: onnxruntime, for the ONNX models
exported with `--triton-backend python`, which stand in for Triton's onnxruntime backend (the
official image has it; pytriton's server does not). The stub runs Python isolated (PYTHONPATH is
ignored) and finds its environment through `python3` on PATH, hence a venv; it links libpython,
hence LD_LIBRARY_PATH.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import onnxruntime

from tests.dockerfiles import TRITON_DOCKERFILE, installed_requirements

PYTRITON = "nvidia-pytriton==0.7.0"  # tritonserver 2.51 with the Python backend and stubs for Python 3.8-3.13
STUB_NUMPY = "numpy<2"  # what the Python backend's stub was built against, and what the official image has
# what the Triton image adds to the official one, read from its Dockerfile
IMAGE_REQUIREMENTS = tuple(installed_requirements(TRITON_DOCKERFILE))
KIT_PACKAGES = (PYTRITON, STUB_NUMPY, *IMAGE_REQUIREMENTS)
# beside this venv's packages (`make clean` removes both), named after what it holds, so a change of
# the image's packages prepares a new kit rather than testing with the old one
KIT_DIR = Path(sys.prefix) / f"triton-kit-{hashlib.sha256(' '.join(KIT_PACKAGES).encode()).hexdigest()[:12]}"
PREPARE_TIMEOUT_S = 900.0  # pip downloading about 75 MB on a first run
STARTUP_TIMEOUT_S = 180.0  # every Python-backend model starts a stub process; two shared cores are slow
STOP_TIMEOUT_S = 30.0
STUBS_GONE_TIMEOUT_S = 3.0
HOST = "127.0.0.1"
LOG_TAIL_CHARS = 6000


def _site_packages(venv: Path) -> Path:
    return venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def _prepare(kit: Path) -> None:
    """Write the kit into `kit` (a fresh folder): the stub's venv with the wheel and the Triton
    image's packages, onnxruntime from this venv, and backends/python."""
    env = kit / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, capture_output=True)
    site_packages = _site_packages(env)
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
         "--target", str(site_packages), *KIT_PACKAGES],
        capture_output=True, text=True, timeout=PREPARE_TIMEOUT_S)
    if pip.returncode != 0:
        raise RuntimeError(f"could not install {' '.join(KIT_PACKAGES)} for the Triton tests:\n{pip.stdout}{pip.stderr}")
    # onnxruntime alone from this venv (a folder holding a link to it), after the kit's own packages;
    # a .pth line is read relative to its site-packages, and the kit is renamed once prepared
    onnxruntime_only = kit / "onnxruntime-from-venv"
    onnxruntime_only.mkdir()
    (onnxruntime_only / "onnxruntime").symlink_to(Path(onnxruntime.__file__).parent)
    (site_packages / "zz_onnxruntime.pth").write_text(os.path.relpath(onnxruntime_only, site_packages) + "\n")
    server = site_packages / "pytriton" / "tritonserver"
    stub = server / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}" / "triton_python_backend_stub"
    if not stub.is_file():
        raise RuntimeError(f"{PYTRITON} has no Python backend stub for Python {sys.version_info.major}.{sys.version_info.minor}")
    backend = kit / "backends" / "python"  # what --backend-directory names: the library, its utils and the stub
    backend.mkdir(parents=True)
    # relative links: the kit is prepared under a temporary name, then renamed
    for source in (server / "backends" / "python" / "libtriton_python.so",
                   server / "backends" / "python" / "triton_python_backend_utils.py", stub):
        (backend / source.name).symlink_to(os.path.relpath(source, backend))
    (kit / "bin").symlink_to(os.path.relpath(server / "bin", kit))


def kit_python(kit: Path) -> Path:
    """The interpreter the kit's Python backend stubs run models with."""
    return kit / "env" / "bin" / "python3"


def triton_kit() -> Path:
    """The kit folder (bin/tritonserver, backends/, env/), prepared on first use; a lock keeps two
    test runs from preparing it at once, and a rename keeps a half-prepared one from being used."""
    if (KIT_DIR / "bin" / "tritonserver").is_file():
        return KIT_DIR
    KIT_DIR.parent.mkdir(parents=True, exist_ok=True)
    with open(KIT_DIR.parent / ".triton-kit.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (KIT_DIR / "bin" / "tritonserver").is_file():
            shutil.rmtree(KIT_DIR, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(dir=KIT_DIR.parent, prefix=".triton-kit."))
            os.chmod(tmp, 0o755)
            try:
                _prepare(tmp)
                os.rename(tmp, KIT_DIR)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    return KIT_DIR


def _libpython_found(libdir: str | None) -> bool:
    name = f"libpython{sys.version_info.major}.{sys.version_info.minor}.so.1.0"
    if libdir and (Path(libdir) / name).exists():
        return True
    ldconfig = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True) if shutil.which("ldconfig") else None
    return ldconfig is not None and name in ldconfig.stdout


def _environment(kit: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{kit / 'env' / 'bin'}{os.pathsep}{env.get('PATH', '')}"  # the stub's `python3`
    libdir = sysconfig.get_config_var("LIBDIR")  # the libpython the stub links, this interpreter's own
    if not _libpython_found(libdir):
        raise AssertionError(
            f"the Triton Python backend's stub links libpython{sys.version_info.major}.{sys.version_info.minor}.so.1.0, "
            f"which neither {libdir} nor the system has: install it (Debian: apt-get install "
            f"libpython{sys.version_info.major}.{sys.version_info.minor}) or use a Python built with --enable-shared")
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, env.get("LD_LIBRARY_PATH")) if p)
    env.pop("PYTHONPATH", None)
    env.pop("PYTHONHOME", None)
    return env


SHM_PREFIX = "embedserve-tests-"  # then <pid>p<port>_: the stubs' shared-memory regions of one server


def _sweep_regions_of_dead_runs() -> None:
    """Shared memory left by test runs that were killed before they could stop their servers."""
    for region in Path("/dev/shm").glob(f"{SHM_PREFIX}*p*_*"):
        pid = region.name.removeprefix(SHM_PREFIX).split("p", 1)[0]
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            region.unlink(missing_ok=True)
        except (ValueError, PermissionError):
            pass  # not ours to judge


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class TritonServer:
    """A tritonserver process serving `models` of `repository` over HTTP on 127.0.0.1 (no gRPC,
    no metrics), its log in `workdir`. Started ready, or an AssertionError with the log."""

    def __init__(self, repository: Path, models: list[str], workdir: Path):
        kit = triton_kit()
        self.port = _free_port()
        self.log_path = Path(workdir) / f"tritonserver-{self.port}.log"
        # the stubs' shared-memory regions are named after this prefix: servers side by side must differ
        self.shm_prefix = f"{SHM_PREFIX}{os.getpid()}p{self.port}_"
        _sweep_regions_of_dead_runs()
        command = [
            str(kit / "bin" / "tritonserver"), f"--model-repository={repository}", f"--backend-directory={kit / 'backends'}",
            "--model-control-mode=explicit", *(f"--load-model={m}" for m in models),
            f"--http-address={HOST}", f"--http-port={self.port}", "--allow-grpc=false", "--allow-metrics=false",
            "--exit-timeout-secs=2",  # an idle keep-alive connection would hold a stop this long
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
        ]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=_environment(kit),
                                            cwd=workdir, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        """host:port, as EMBEDSERVE_TRITON_URL takes it."""
        return f"{HOST}:{self.port}"

    def log(self) -> str:
        text = self.log_path.read_bytes().decode("utf-8", errors="replace")
        return text if len(text) <= LOG_TAIL_CHARS else "...\n" + text[-LOG_TAIL_CHARS:]

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"tritonserver exited with code {self.process.returncode} before it was ready; "
                                     f"its log:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"http://{self.url}/v2/health/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass  # not listening yet, or listening with models still loading (400)
            time.sleep(0.2)
        raise AssertionError(f"tritonserver was not ready within {STARTUP_TIMEOUT_S:.0f} s; its log:\n{self.log()}")

    def stop(self) -> None:
        """Stop the server and its Python-backend stubs (its whole process group), and remove the
        shared memory of stubs that were killed before they could."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        deadline = time.monotonic() + STUBS_GONE_TIMEOUT_S
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # stubs that outlived their server
            while time.monotonic() < deadline:  # until they are gone, so none writes a region after the sweep
                os.killpg(self.process.pid, 0)
                time.sleep(0.05)
        except ProcessLookupError:
            pass
        for region in Path("/dev/shm").glob(f"{self.shm_prefix}*"):
            region.unlink(missing_ok=True)
