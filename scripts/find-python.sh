#!/usr/bin/env bash
# Prints the path of a working interpreter for Python VERSION (e.g. 3.12), for the per-version
# virtualenvs of `make test-pythons`. Looks, in order, at `pythonVERSION` on PATH (a pyenv shim
# there counts only if it runs), at pyenv's installs ($PYENV_ROOT/versions/VERSION.*, newest
# patch first), and at uv's managed installs. Exits 1 with one line when there is none.
#
# Usage: scripts/find-python.sh VERSION
set -euo pipefail

version="${1:?usage: find-python.sh VERSION (e.g. 3.12)}"
name="python${version}"

works() {  # the interpreter runs and is the version asked for
    [ -x "$1" ] && [ "$("$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" = "$version" ]
}

if found="$(command -v "$name" 2>/dev/null)" && works "$found"; then
    echo "$found"
    exit 0
fi

pyenv_root="${PYENV_ROOT:-}"
if [ -z "$pyenv_root" ] && command -v pyenv >/dev/null 2>&1; then
    pyenv_root="$(pyenv root)"
fi
for root in "$pyenv_root" "$HOME/.pyenv"; do
    [ -n "$root" ] && [ -d "$root/versions" ] || continue
    # newest patch release first: 3.12.10 before 3.12.9
    for dir in $(ls -d "$root/versions/$version".* 2>/dev/null | sort -rV); do
        if works "$dir/bin/$name"; then
            echo "$dir/bin/$name"
            exit 0
        fi
    done
done

if command -v uv >/dev/null 2>&1 && found="$(UV_PYTHON_DOWNLOADS=never uv python find --no-project "$version" 2>/dev/null)" && works "$found"; then
    echo "$found"
    exit 0
fi

echo "find-python: no Python $version here (pyenv install $version, or set PYTHONS to the versions you have)" >&2
exit 1
