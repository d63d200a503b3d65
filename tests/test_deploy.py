"""The Docker deployment, checked without a Docker engine.

The image's install steps (deploy/install.sh, run by the Dockerfile) are run
here into a fresh venv from the same build context Docker would get, and the
Dockerfile's own CMD and HEALTHCHECK are run against the result. The compose
files are validated against the Compose specification and read for what a
deployment relies on: healthchecks, persistence, no default secret, profiles.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from quart_chat.launcher import STOP_SECONDS

from .servers import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
BUILD_PORT = "9990"


# --- reading the files -------------------------------------------------------


class Reset(list[Any]):
    """A `!reset` sequence: replaces the base file's list instead of extending it."""


class ComposeLoader(yaml.SafeLoader):
    """YAML with Compose's merge tags, which plain YAML loaders reject."""


def _construct_reset(loader: yaml.SafeLoader, node: yaml.Node) -> Reset:
    if not isinstance(node, yaml.SequenceNode):
        raise yaml.constructor.ConstructorError(None, None, "!reset on a non-list", node.start_mark)
    return Reset(loader.construct_sequence(node))


ComposeLoader.add_constructor("!reset", _construct_reset)


def load_compose(path: Path) -> dict[str, Any]:
    with path.open() as file:
        data = yaml.load(file, Loader=ComposeLoader)
    assert isinstance(data, dict)
    return data


def compose() -> dict[str, Any]:
    return load_compose(ROOT / "compose.yaml")


def scale_override() -> dict[str, Any]:
    return load_compose(ROOT / "deploy" / "compose.scale.yaml")


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, comments dropped and continuations joined."""
    joined = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), " ".join(rest.split())))
    return result


def dockerfile_json(keyword: str) -> list[str]:
    (args,) = [rest for key, rest in dockerfile_instructions() if key == keyword]
    if keyword == "HEALTHCHECK":
        args = args[args.index("CMD ") + len("CMD ") :]
    parsed = json.loads(args)
    assert isinstance(parsed, list), f"{keyword} must use the exec (JSON) form"
    return [str(item) for item in parsed]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


# --- the build context (.dockerignore) ----------------------------------------


def _pattern_regex(pattern: str) -> str:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return out


def dockerignore_rules() -> list[tuple[bool, str, str]]:
    """(include, pattern, regex) per line of .dockerignore, in order; the last match decides."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = posixpath.normpath(line.removeprefix("!").strip("/"))
        rules.append((include, pattern, _pattern_regex(pattern)))
    return rules


def in_context(rules: list[tuple[bool, str, str]], relative: str) -> bool:
    # As in Docker, a pattern that matches a directory matches everything below it.
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for include, _, regex in rules:
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            included = include
    return included


def may_hold_included(rules: list[tuple[bool, str, str]], directory: str) -> bool:
    """Whether a `!` rule could bring back something below an excluded directory."""
    return any(
        include and (pattern.startswith(directory + "/") or pattern[0] in "*?[")
        for include, pattern, _ in rules
    )


def build_context(source: Path, dest: Path) -> set[str]:
    """Copy what `docker build` would send for `source`; return the relative paths."""
    rules = dockerignore_rules()
    copied = set()
    for directory, subdirs, files in os.walk(source):
        relative_dir = Path(directory).relative_to(source).as_posix()
        paths = {name: posixpath.normpath(f"{relative_dir}/{name}") for name in subdirs}
        subdirs[:] = [
            name
            for name in subdirs
            if in_context(rules, paths[name]) or may_hold_included(rules, paths[name])
        ]
        for name in files:
            relative = posixpath.normpath(f"{relative_dir}/{name}")
            if in_context(rules, relative):
                target = dest / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(directory) / name, target)
                copied.add(relative)
    return copied


def test_build_context_holds_the_app_and_never_secrets(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    for relative in [
        "pyproject.toml",
        "README.md",
        "quart_chat/__init__.py",
        "quart_chat/blueprints/ops.py",
        "quart_chat/__pycache__/app.cpython-311.pyc",
        "templates/base.html",
        "static/favicon.svg",
        "deploy/install.sh",
        "deploy/Caddyfile",
        ".env",
        ".env.local",
        "var/secret_key",
        "var/redis/appendonly.aof",
        ".git/config",
        ".venv/bin/python",
        "tests/test_x.py",
        "bench/results/run.json",
    ]:
        (tree / relative).parent.mkdir(parents=True, exist_ok=True)
        (tree / relative).write_text("x")
    copied = build_context(tree, tmp_path / "context")
    assert copied == {
        "pyproject.toml",
        "README.md",
        "quart_chat/__init__.py",
        "quart_chat/blueprints/ops.py",
        "templates/base.html",
        "static/favicon.svg",
        "deploy/install.sh",
    }


# --- Dockerfile ----------------------------------------------------------------


def test_dockerfile_is_multistage_slim_and_non_root() -> None:
    steps = dockerfile_instructions()
    froms = [rest for key, rest in steps if key == "FROM"]
    assert len(froms) == 2
    builder, runtime = froms
    assert builder.endswith(" AS builder")
    # The venv's interpreter symlink must resolve in the runtime stage too.
    assert builder.removesuffix(" AS builder") == runtime
    assert re.fullmatch(r"python:3\.\d+-slim-\w+", runtime)

    # Dependencies are installed from pyproject.toml alone, before the source is copied.
    order = [
        ("COPY", "pyproject.toml ./"),
        ("RUN", "install-quart-chat deps /app/.venv"),
        ("COPY", ". ."),
        ("RUN", "install-quart-chat app /app/.venv"),
        ("COPY", "--from=builder /app/.venv /app/.venv"),
    ]
    positions = [steps.index(step) for step in order]
    assert positions == sorted(positions)
    assert ("COPY", "deploy/install.sh /usr/local/bin/install-quart-chat") in steps[: positions[1]]

    runtime_steps = steps[steps.index(("FROM", runtime)) :]
    users = [rest for key, rest in runtime_steps if key == "USER"]
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    assert [key for key, _ in runtime_steps][-1] == "CMD"


def test_dockerfile_builds_without_fetching_a_frontend_image() -> None:
    # A `# syntax=` parser directive makes every BuildKit build (`docker compose build`)
    # pull that frontend image from Docker Hub first, which fails offline and behind
    # registry mirrors; nothing in this Dockerfile needs more than the built-in frontend.
    head = (ROOT / "Dockerfile").read_text().splitlines()
    directives = [line for line in head[: head.index("")] if re.match(r"#\s*syntax\s*=", line)]
    assert directives == []


def test_dockerfile_user_setup_builds_without_warnings() -> None:
    # uid/gid 10001 are above SYS_UID_MAX/SYS_GID_MAX (999): with --system, useradd
    # prints a warning in every build (.ci/docker-smoke fails a build that warns).
    (run,) = [rest for key, rest in dockerfile_instructions() if key == "RUN" and "useradd" in rest]
    assert "--uid 10001" in run and "--gid 10001" in run
    assert "--system" not in run


def test_dockerfile_bakes_in_no_secrets() -> None:
    for key, rest in dockerfile_instructions():
        if key in {"ENV", "ARG"}:
            assert not re.search(r"SECRET|PASSWORD|TOKEN", rest, re.IGNORECASE), rest


def test_dockerfile_cmd_execs_the_launcher_with_workers_from_env() -> None:
    cmd = dockerfile_json("CMD")
    assert cmd[:2] == ["/bin/sh", "-c"]
    # `exec` makes the launcher PID 1, so `docker stop`'s SIGTERM reaches it.
    assert cmd[2].startswith("exec quart-chat serve --bind 0.0.0.0:9990 ")
    assert '--workers "${CHAT_WORKERS:-2}"' in cmd[2]
    assert "EXPOSE 9990" in [f"{k} {r}" for k, r in dockerfile_instructions()]


# --- the image's install steps, run for real ------------------------------------


def run_image_command(
    command: list[str], venv: Path, env: dict[str, str], cwd: Path, port: int, **kwargs: Any
) -> subprocess.Popen[bytes]:
    """Run a Dockerfile command as the container would, but on a free local port."""
    local = [arg.replace(f"0.0.0.0:{BUILD_PORT}", f"127.0.0.1:{port}") for arg in command]
    local = [arg.replace(f"127.0.0.1:{BUILD_PORT}/", f"127.0.0.1:{port}/") for arg in local]
    return subprocess.Popen(
        local,
        cwd=cwd,
        env={
            "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
            "PYTHONUNBUFFERED": "1",
            **env,
        },
        stdin=subprocess.DEVNULL,
        **kwargs,
    )


def healthcheck_exit_code(venv: Path, port: int, workdir: Path) -> int:
    probe = run_image_command(dockerfile_json("HEALTHCHECK"), venv, {}, workdir, port)
    return probe.wait(30)


def test_image_install_steps_serve_the_app(tmp_path: Path, redis_url: str) -> None:
    context = tmp_path / "context"
    build_context(ROOT, context)
    install = ["sh", str(context / "deploy" / "install.sh")]
    venv = tmp_path / "app" / ".venv"
    # Stage 1 sees only pyproject.toml, as in the Dockerfile.
    deps_stage = tmp_path / "deps"
    deps_stage.mkdir()
    shutil.copy2(context / "pyproject.toml", deps_stage)
    build_env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run([*install, "deps", str(venv)], cwd=deps_stage, env=build_env, check=True)
    assert not (venv / "bin" / "quart-chat").exists()  # dependencies only
    subprocess.run([*install, "app", str(venv)], cwd=context, env=build_env, check=True)
    # Nothing installs packages at run time: pip and setuptools are not in the image.
    assert not list(venv.glob("bin/pip*"))
    assert not list(venv.glob("lib/python*/site-packages/setuptools"))

    workdir = tmp_path / "app"
    located = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import quart_chat; print(quart_chat.__file__)"],
        cwd=workdir,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    package = Path(located).parent
    assert package.is_relative_to(venv)  # installed, not this checkout
    assert (package / "templates" / "base.html").is_file()
    assert (package / "static" / "favicon.svg").is_file()

    port = free_port()
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        server = run_image_command(
            dockerfile_json("CMD"),
            venv,
            {
                "CHAT_REDIS_URL": redis_url,
                "CHAT_SECRET_KEY": "deploy-test-secret-" + "k" * 32,
                "CHAT_DATA_DIR": str(workdir / "var"),
                "CHAT_WORKERS": "2",
            },
            workdir,
            port,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(
            lambda: server.poll() is not None or healthcheck_exit_code(venv, port, workdir) == 0,
            timeout=60,
            what="the image's HEALTHCHECK to pass",
        )
        assert server.poll() is None, log_path.read_text()
        # The shell exec'd itself away: the process Docker would signal is the launcher.
        cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes().split(b"\0")
        assert any(arg.endswith(b"quart-chat") for arg in cmdline), cmdline
        assert b"serve" in cmdline

        base = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(base + "/healthz", timeout=5) as reply:
            assert reply.status == 200
            assert json.load(reply) == {"status": "ok"}
        with urllib.request.urlopen(base + "/static/favicon.svg", timeout=5) as reply:
            assert reply.status == 200
            assert reply.read() == (ROOT / "static" / "favicon.svg").read_bytes()
        # The login page proves the templates ship and render from the installed package.
        with urllib.request.urlopen(base + "/login", timeout=5) as reply:
            assert reply.status == 200
            page = reply.read().decode()
            assert 'id="email"' in page and "/static/login.js" in page
        with urllib.request.urlopen(base + "/static/login.js", timeout=5) as reply:
            assert reply.read() == (ROOT / "static" / "login.js").read_bytes()
        assert f"serving on http://127.0.0.1:{port} with 2 worker(s)" in log_path.read_text()
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(30)
    assert code == 0, log_path.read_text()
    assert healthcheck_exit_code(venv, port, workdir) != 0


# --- compose.yaml ----------------------------------------------------------------


@pytest.mark.parametrize("path", ["compose.yaml", "deploy/compose.scale.yaml"])
def test_compose_files_follow_the_compose_specification(path: str) -> None:
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    errors = [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator_class(schema).iter_errors(load_compose(ROOT / path))
    ]
    assert errors == []


def test_app_service_runs_the_image_against_compose_redis() -> None:
    app = compose()["services"]["app"]
    assert app["build"] == "."
    assert app["env_file"] == ".env"
    assert "profiles" not in app
    env = environment(app)
    assert env["CHAT_REDIS_URL"] == "redis://redis:6379/0"
    assert app["depends_on"] == {"redis": {"condition": "service_healthy"}}
    assert app["restart"] in {"unless-stopped", "always"}
    # Host port 9990 unless CHAT_PORT says otherwise (.env.example documents it).
    assert app["ports"] == ["${CHAT_PORT:-9990}:9990"]
    # tini as PID 1 forwards signals and reaps children.
    assert app["init"] is True
    # The image's HEALTHCHECK covers the app; compose must not switch it off.
    assert not app.get("healthcheck", {}).get("disable", False)
    assert "/healthz" in " ".join(dockerfile_json("HEALTHCHECK"))


def test_compose_waits_for_the_graceful_stop() -> None:
    # `docker compose stop` SIGKILLs after stop_grace_period (10 s by default):
    # shorter than the launcher's own bound, browsers would see 1006 instead of
    # 1012 and presence would be left behind.
    grace = compose()["services"]["app"]["stop_grace_period"]
    assert re.fullmatch(r"\d+s", grace), grace
    assert int(grace[:-1]) > STOP_SECONDS


def test_no_secret_has_a_default() -> None:
    env = environment(compose()["services"]["app"])
    assert re.fullmatch(r"\$\{CHAT_SECRET_KEY:\?[^}]+\}", env["CHAT_SECRET_KEY"])
    for name, service in compose()["services"].items():
        for key, value in environment(service).items():
            if re.search(r"SECRET|PASSWORD|TOKEN", key):
                assert re.fullmatch(rf"\$\{{{key}:\?[^}}]+\}}", value), (name, key, value)


def test_redis_persists_to_a_named_volume_and_has_a_healthcheck() -> None:
    spec = compose()
    redis = spec["services"]["redis"]
    assert redis["image"].startswith("redis:")
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    (volume,) = redis["volumes"]
    name, mount = volume.split(":")
    assert mount == "/data"
    assert name in spec["volumes"]  # named, not a bind mount
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert "ports" not in redis  # reachable only by the app
    assert "profiles" not in redis


def test_dev_profile_adds_mailpit() -> None:
    services = compose()["services"]
    mailpit = services["mailpit"]
    assert mailpit["profiles"] == ["dev"]
    assert mailpit["image"].startswith("axllent/mailpit:")
    targets = {str(port).rsplit(":", 1)[1] for port in mailpit["ports"]}
    assert targets == {"8025", "1025"}
    assert [name for name, service in services.items() if "dev" in service.get("profiles", [])] == [
        "mailpit"
    ]


def test_scale_setup_publishes_only_the_proxy() -> None:
    base = compose()["services"]
    override = scale_override()["services"]
    proxy = base["proxy"]
    assert proxy["profiles"] == ["scale"]
    assert proxy["depends_on"] == {"app": {"condition": "service_healthy"}}
    caddyfile_mount = next(v for v in proxy["volumes"] if v.endswith(":/etc/caddy/Caddyfile:ro"))
    # Certificates (/data) and Caddy's autosaved config (/config) on named volumes: the
    # image declares both as volumes, and an unnamed one is a new anonymous volume per
    # container.
    named = {
        volume.split(":")[1]: volume.split(":")[0]
        for volume in proxy["volumes"]
        if not volume.startswith(".")
    }
    assert set(named) == {"/data", "/config"}
    assert set(named.values()) <= set(compose()["volumes"])
    assert (ROOT / caddyfile_mount.split(":")[0]).resolve() == ROOT / "deploy" / "Caddyfile"

    # Replicas would collide on host port 9990: the override empties the app's ports
    # (`!reset`, not a merge) and publishes the proxy there instead.
    assert isinstance(override["app"]["ports"], Reset) and override["app"]["ports"] == []
    assert environment(override["app"])["CHAT_TRUSTED_PROXY_HOPS"] == "1"
    assert "${CHAT_PROXY_PORT:-9990}:80" in override["proxy"]["ports"]
    assert "ports" not in proxy  # only in the scale setup

    # Caddy finds every replica by the service's DNS name, on the app's port.
    caddyfile = (ROOT / "deploy" / "Caddyfile").read_text()
    assert re.search(r"^\s*dynamic a app 9990\b", caddyfile, re.MULTILINE)


def test_env_example_documents_the_container_settings() -> None:
    example = (ROOT / ".env.example").read_text()
    names = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", example, re.MULTILINE))
    used = set(re.findall(r"\$\{([A-Z][A-Z0-9_]+)", (ROOT / "compose.yaml").read_text()))
    used |= set(
        re.findall(r"\$\{([A-Z][A-Z0-9_]+)", (ROOT / "deploy/compose.scale.yaml").read_text())
    )
    used |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]+)", dockerfile_json("CMD")[2]))
    assert used <= names, used - names
