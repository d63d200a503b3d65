#!/bin/sh
# The image's install steps. The Dockerfile runs them and tests/test_deploy.py
# runs the very same file, so the test proves what the image contains.
#
#   install.sh deps VENV   (in a directory holding only pyproject.toml)
#       create VENV and install the project's dependencies, not the project:
#       the Docker layer this makes survives every code edit.
#   install.sh app VENV    (in the source tree)
#       build the wheel and install it into VENV, non-editable, so the
#       image holds the package with its templates/ and static/ inside; then
#       remove pip and setuptools from VENV.
#
# PYTHON picks the interpreter for the new venv (default: python3).
set -eu

step=$1
venv=$2

case "$step" in
deps)
    "${PYTHON:-python3}" -m venv "$venv"
    # No lock file yet, so pyproject.toml's ranges are the requirements.
    requirements=$(mktemp)
    "$venv/bin/python" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > "$requirements"
    "$venv/bin/pip" install --no-cache-dir --disable-pip-version-check -r "$requirements"
    rm -f "$requirements"
    ;;
app)
    dist=$(mktemp -d)
    "$venv/bin/pip" wheel --no-cache-dir --disable-pip-version-check --no-deps --wheel-dir "$dist" .
    # Without --no-deps: the dependencies are already there, and a list that
    # drifted from pyproject.toml gets completed instead of failing at runtime.
    "$venv/bin/pip" install --no-cache-dir --disable-pip-version-check "$dist"/quart_chat-*.whl
    "$venv/bin/pip" check
    # Nothing installs packages at run time: pip and setuptools (about 25 MB)
    # stay out of the image.
    "$venv/bin/pip" uninstall --yes --quiet --disable-pip-version-check pip setuptools
    rm -rf "$dist"
    ;;
*)
    echo "usage: $0 deps|app VENV" >&2
    exit 2
    ;;
esac
