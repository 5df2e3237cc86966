"""Every Dockerfile, checked without building: hadolint, base image argument, dependency
layer first, non-root user, no secrets, COPY sources that exist and that the deny-all
ignore file lets through, models prepared by name, and the same command as compose.
(tests/compose builds and runs them for real.)"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.deploy.files import (
    DockerIgnore,
    Instruction,
    copy_sources,
    dockerfile_instructions,
    exec_form,
    resolved_compose,
    tool,
    tracked_files,
)
from tests.harness import REPO

pytestmark = pytest.mark.deploy

ALL_DOCKERFILES = sorted(
    p.relative_to(REPO)
    for p in REPO.glob("**/Dockerfile")
    if not {".venv", "outputs", ".deploy-tools", ".cache"} & set(p.relative_to(REPO).parts)
)
# Built by deploy/build-images before compose builds the rest: the shared Python runtime
# (its own assembled context) and Redis from Debian's package (compose only runs it).
RUNTIME = Path("deploy/runtime/Dockerfile")
REDIS = Path("deploy/redis/Dockerfile")
SCRIPT_BUILT = [RUNTIME, REDIS]
DOCKERFILES = [p for p in ALL_DOCKERFILES if p not in SCRIPT_BUILT]
IDS = [str(p.parent) for p in DOCKERFILES]
ALL_IDS = [str(p.parent) for p in ALL_DOCKERFILES]
BUILD_IMAGES = REPO / "deploy" / "build-images"
SECRET_NAME = re.compile(r"(KEY|TOKEN|PASSWORD|SECRET)", re.IGNORECASE)


def compose_service(dockerfile: Path) -> tuple[str, dict]:  # type: ignore[type-arg]
    """The compose service that builds this Dockerfile."""
    for name, service in resolved_compose("gpu")["services"].items():
        build = service.get("build")
        if not build:
            continue
        context = Path(build["context"]).resolve()
        built = (context / build.get("dockerfile", "Dockerfile")).resolve()
        if built == (REPO / dockerfile).resolve():
            return name, service
    raise AssertionError(f"no compose service builds {dockerfile}")


def build_context(dockerfile: Path) -> tuple[Path, DockerIgnore]:
    """The context compose sends for this Dockerfile, and the ignore file Docker applies."""
    _, service = compose_service(dockerfile)
    context = Path(service["build"]["context"]).resolve()
    specific = (REPO / dockerfile).with_name("Dockerfile.dockerignore")
    ignore = specific if specific.is_file() else context / ".dockerignore"
    assert ignore.is_file(), f"{dockerfile}: no .dockerignore for its context"
    return context, DockerIgnore(ignore)


def test_every_service_folder_has_a_dockerfile() -> None:
    built = {compose_service(path)[0] for path in DOCKERFILES}
    with_build = {name for name, s in resolved_compose("gpu")["services"].items() if s.get("build")}
    assert built == with_build
    assert {
        "gateway",
        "stt_tiny_ws",
        "stt_cpu_ws",
        "stt_gpu_ws",
        "tts_vits",
        "tts_clone",
        "nginx",
        "gpt-sovits",
    } <= built
    script = BUILD_IMAGES.read_text()
    assert set(SCRIPT_BUILT) <= set(ALL_DOCKERFILES)
    for dockerfile in SCRIPT_BUILT:
        assert f"-f {dockerfile}" in script, f"deploy/build-images does not build {dockerfile}"


@pytest.mark.parametrize("dockerfile", ALL_DOCKERFILES, ids=ALL_IDS)
def test_hadolint_passes(dockerfile: Path) -> None:
    result = subprocess.run(
        [tool("hadolint"), "--no-color", str(REPO / dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get install curl\n")
    result = subprocess.run(
        [tool("hadolint"), "--no-color", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0 and "DL3006" in result.stdout


@pytest.mark.parametrize("dockerfile", ALL_DOCKERFILES, ids=ALL_IDS)
def test_base_image_is_an_argument_and_the_user_is_not_root(dockerfile: Path) -> None:
    steps = dockerfile_instructions(REPO / dockerfile)
    first_from = next(i for i, step in enumerate(steps) if step.keyword == "FROM")
    # The Python services build on the shared runtime, itself on BASE_IMAGE.
    argument = "RUNTIME_IMAGE" if dockerfile in PYTHON_DOCKERFILES else "BASE_IMAGE"
    assert any(s.keyword == "ARG" and s.args.startswith(f"{argument}=") for s in steps[:first_from])
    stages = {s.args.split()[-1] for s in steps if s.keyword == "FROM" and " AS " in s.args}
    for step in steps:
        if step.keyword == "FROM":
            assert "${" + argument + "}" in step.args or step.args.split()[0] in stages, step
    final_stage = steps[max(i for i, s in enumerate(steps) if s.keyword == "FROM") :]
    users = [s.args for s in final_stage if s.keyword == "USER"]
    if not users:
        # The unprivileged nginx base image sets its own non-root USER.
        assert "unprivileged" in steps[0].args, dockerfile
    else:
        assert users[-1].split(":")[0] not in ("root", "0"), users


@pytest.mark.parametrize("dockerfile", ALL_DOCKERFILES, ids=ALL_IDS)
def test_no_secret_is_baked_in(dockerfile: Path) -> None:
    for step in dockerfile_instructions(REPO / dockerfile):
        if step.keyword in ("ENV", "ARG"):
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", step.args) or [step.args.split()[0]]
            assert not [n for n in names if SECRET_NAME.search(n)], step


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_copy_sources_exist_and_pass_the_deny_all_ignore_file(dockerfile: Path) -> None:
    context, ignore = build_context(dockerfile)
    assert ignore.denies_all_first, f"{ignore.path} must start with '*'"
    files = tracked_files(context)
    sent = {f for f in files if ignore.included(f)}
    copied: list[str] = []
    for step in dockerfile_instructions(REPO / dockerfile):
        if step.keyword not in ("COPY", "ADD"):
            continue
        for source in copy_sources(step):
            path = context / source
            assert path.exists(), f"{dockerfile}:{step.line}: {source} does not exist"
            inside = [f for f in files if f == source or f.startswith(source.rstrip("/") + "/")]
            assert inside, f"{source}: nothing git knows"
            # Kept out on purpose: caches, and the build files themselves.
            missing = [
                f
                for f in inside
                if f not in sent
                and "__pycache__" not in f
                and not Path(f).name.startswith("Dockerfile")
            ]
            assert not missing, f"{ignore.path} keeps out {missing[:5]}"
            copied.append(source.rstrip("/"))
    # Deny-all: nothing goes into the context that no COPY reads.
    extra = [f for f in sent if not any(f == c or f.startswith(c + "/") for c in copied)]
    assert not extra, f"{ignore.path} sends files no COPY uses: {extra[:5]}"


def test_the_ignore_matcher_behaves_like_docker(tmp_path: Path) -> None:
    rules = tmp_path / ".dockerignore"
    rules.write_text("*\n!voicemesh/\n**/__pycache__\n!README.md\n")
    ignore = DockerIgnore(rules)
    assert ignore.included("voicemesh/stt/engine.py")
    assert not ignore.included("voicemesh/__pycache__/x.pyc")
    assert not ignore.included("gateway/app.py")
    assert ignore.included("README.md") and not ignore.included("docs/README.md")


def _python_steps(dockerfile: Path) -> list[Instruction]:
    return dockerfile_instructions(REPO / dockerfile)


def test_the_runtime_installs_the_dependencies_offline_before_the_code() -> None:
    steps = _python_steps(RUNTIME)
    copies = [(i, copy_sources(s)) for i, s in enumerate(steps) if s.keyword == "COPY"]
    wheels_index = next(i for i, sources in copies if sources == ["wheels"])
    first_index = next(
        i for i, sources in copies if set(sources) == {"pyproject.toml", "README.md"}
    )
    code_index = next(i for i, sources in copies if "voicemesh" in sources)
    installs = [
        i
        for i, s in enumerate(steps)
        if s.keyword == "RUN"
        and "pip install" in s.args
        and "--no-index" in s.args
        and "--find-links /wheels" in s.args
    ]
    assert any(max(wheels_index, first_index) < i < code_index for i in installs)
    # Every extra a container runs, in the normalised spelling pip 23 needs.
    install = steps[installs[0]].args
    for name in ("gateway", "stt-tiny-ws", "stt-cpu-ws", "tts-vits", "tts-clone"):
        assert name in install, name
    # The wheels stay in their own stage: the final one copies only the environment.
    final = max(i for i, s in enumerate(steps) if s.keyword == "FROM")
    assert wheels_index < final
    assert any(s.keyword == "COPY" and "--from=deps" in s.args for s in steps[final:])


def test_the_runtime_context_holds_what_its_dockerfile_copies() -> None:
    script = BUILD_IMAGES.read_text()
    for step in _python_steps(RUNTIME):
        for source in copy_sources(step) if step.keyword == "COPY" else []:
            assert re.search(rf"(CONTEXT/{source}\b|\b{source}\b.*CONTEXT)", script), source


PYTHON_DOCKERFILES = [
    p
    for p in DOCKERFILES
    if (REPO / p.parent / "__init__.py").exists() or p.parent.name in ("tts_vits", "tts_clone")
]


@pytest.mark.parametrize(
    "dockerfile", PYTHON_DOCKERFILES, ids=[str(p.parent) for p in PYTHON_DOCKERFILES]
)
def test_services_add_only_their_code_to_the_runtime(dockerfile: Path) -> None:
    steps = _python_steps(dockerfile)
    copies = [copy_sources(s) for s in steps if s.keyword == "COPY"]
    assert copies[0] == ["pyproject.toml", "README.md"]
    assert ["voicemesh"] in copies and [dockerfile.parent.name] in copies
    installs = [s.args for s in steps if s.keyword == "RUN" and "pip install" in s.args]
    # No dependency is installed twice: the runtime has them all.
    assert installs and all("--no-deps" in i and "--no-index" in i for i in installs)


@pytest.mark.parametrize(
    "dockerfile", PYTHON_DOCKERFILES, ids=[str(p.parent) for p in PYTHON_DOCKERFILES]
)
def test_image_command_equals_the_compose_command(dockerfile: Path) -> None:
    steps = _python_steps(dockerfile)
    cmd = exec_form([s for s in steps if s.keyword == "CMD"][-1])
    _, service = compose_service(dockerfile)
    assert cmd == service["command"]
    expose = [s.args for s in steps if s.keyword == "EXPOSE"]
    assert expose == [cmd[cmd.index("--port") + 1]]


@pytest.mark.parametrize(
    "dockerfile", PYTHON_DOCKERFILES, ids=[str(p.parent) for p in PYTHON_DOCKERFILES]
)
def test_models_are_prepared_at_build_time_by_their_known_names(dockerfile: Path) -> None:
    from voicemesh.assets import find_model

    def prepared(path: Path) -> list[str]:
        text = " ".join(s.args for s in _python_steps(path) if s.keyword == "RUN")
        return [
            name
            for match in re.findall(r"voicemesh models prepare ([^&]+)", text)
            for name in match.split()
        ]

    # Prepared once, in the shared runtime, and by names the model table knows.
    assert prepared(dockerfile) == []
    names = prepared(RUNTIME)
    assert {"tiny.en", "base", "silero-vad", "en_US-joe-medium"} <= set(names)
    for name in names:
        assert find_model(name).name == name


def test_the_root_ignore_file_serves_every_root_context_build() -> None:
    # The classic builder reads only <context>/.dockerignore: it must deny all and still let
    # every COPY source of every image built from the repository root through.
    root = DockerIgnore(REPO / ".dockerignore")
    assert root.denies_all_first
    files = tracked_files(REPO)
    assert not root.included(".venv/bin/python") and not root.included("tests/conftest.py")
    for dockerfile in DOCKERFILES:
        context, _ = build_context(dockerfile)
        if context != REPO.resolve():
            continue
        for step in dockerfile_instructions(REPO / dockerfile):
            for source in copy_sources(step) if step.keyword == "COPY" else []:
                inside = [f for f in files if f == source or f.startswith(source + "/")]
                sent = [f for f in inside if root.included(f)]
                assert sent, f"{dockerfile}: the root .dockerignore keeps out {source}"
