"""A non-editable install of the built wheel serves the app, its templates and static files."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

from .servers import ChatServer

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_install_serves_pages_and_static_files(tmp_path: Path, redis_url: str) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
        check=True,
        timeout=300,
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    (wheel,) = wheels.glob("quart_chat-*.whl")
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(wheel)], check=True, timeout=600
    )
    installed = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import quart_chat, sys; print(quart_chat.__file__)"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert installed.startswith(str(venv))  # not this checkout
    package_dir = Path(installed.strip()).parent
    assert (package_dir / "templates" / "base.html").is_file()

    # Run from an unrelated directory with the venv's own interpreter.
    server = ChatServer(tmp_path / "run", env={"CHAT_REDIS_URL": redis_url}, workers=1)
    server.python = str(venv / "bin" / "python")
    server.start()
    try:
        with urllib.request.urlopen(server.base_url + "/static/favicon.svg", timeout=5) as reply:
            assert reply.status == 200
            assert reply.read() == (ROOT / "static" / "favicon.svg").read_bytes()
        # The login page proves the templates ship and render from the installed package.
        with urllib.request.urlopen(server.base_url + "/login", timeout=5) as reply:
            assert reply.status == 200
            page = reply.read().decode()
            assert 'id="email"' in page and "/static/login.js" in page
        with urllib.request.urlopen(server.base_url + "/static/login.js", timeout=5) as reply:
            assert reply.read() == (ROOT / "static" / "login.js").read_bytes()
    finally:
        assert server.stop() == 0
