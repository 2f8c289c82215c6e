"""The local stack's state on disk (ports, paths, addresses) and the tools it needs (Java)."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shlex
import shutil
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobstream.models.errors import StackError

log = logging.getLogger(__name__)

STATE_FILE = "stack.json"


MIN_JAVA = 17


INSTALL_HINT = (
    "scripts/install-prereqs.sh (or: apt-get update && apt-get install -y "
    "default-jre-headless maven postgresql)"
)


# Other long-lived development services on this machine own these; never hand them out.
RESERVED_PORTS = frozenset({19092, 19093, 15432})


# Below Linux's ephemeral range (32768+), so an outgoing connection can never be holding the
# port a restarted service wants back.
PORT_RANGE = (20000, 32000)


@dataclass
class StackInfo:
    """Where the running stack is: everything a caller or a human needs to reach it."""

    bootstrap: str
    database_url: str
    kafka_version: str
    state_dir: Path
    pg_version: str = ""
    kafka_port: int = 0
    controller_port: int = 0
    pg_port: int = 0
    kafka_pid: int | None = None
    pg_pid: int | None = None
    kafka_log: Path | None = None
    pg_log: Path | None = None
    pg_data_dir: Path | None = None
    already_running: bool = False

    def exports(self) -> str:
        return (
            f"export JOBSTREAM_KAFKA_BOOTSTRAP={shlex.quote(self.bootstrap)}\n"
            f"export JOBSTREAM_DATABASE_URL={shlex.quote(self.database_url)}\n"
        )

    def describe(self) -> str:
        return "\n".join(
            [
                f"kafka {self.kafka_version}: {self.bootstrap} (pid {self.kafka_pid})",
                f"  log: {self.kafka_log}",
                f"postgresql {self.pg_version}: {self.database_url} (pid {self.pg_pid})",
                f"  log: {self.pg_log}",
                f"  data: {self.pg_data_dir}",
                f"state: {self.state_dir / STATE_FILE}",
            ]
        )


@dataclass(frozen=True)
class StackPaths:
    """Absolute paths only: the servers run with another cwd than the command that started them."""

    state: Path

    @classmethod
    def of(cls, state_dir: Path) -> StackPaths:
        return cls(Path(state_dir).expanduser().resolve())

    @property
    def lock(self) -> Path:
        return self.state / "stack.lock"

    @property
    def kafka(self) -> Path:
        return self.state / "kafka"

    @property
    def pg_log(self) -> Path:
        # always under the state dir, even when the cluster itself had to move to /tmp
        return self.state / "pg" / "postgres.log"


def read_state(state_dir: Path) -> dict[str, Any]:
    """A damaged file is treated as absent: the services are re-detected, not trusted blindly."""
    try:
        data = json.loads((state_dir / STATE_FILE).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s: %s", state_dir / STATE_FILE, exc)
        return {}
    return data if isinstance(data, dict) else {}


def write_state(state_dir: Path, data: dict[str, Any]) -> None:
    """Write-then-rename, so a concurrent reader never sees half a file."""
    path = state_dir / STATE_FILE
    tmp = path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def stack_info(
    state_dir: Path, state: dict[str, Any], *, already_running: bool = False
) -> StackInfo:
    k, p = state["kafka"], state["postgres"]
    return StackInfo(
        bootstrap=k["bootstrap"],
        database_url=p["dsn"],
        kafka_version=k["version"],
        state_dir=state_dir,
        pg_version=p.get("version", ""),
        kafka_port=k["port"],
        controller_port=k.get("controller_port", 0),
        pg_port=p["port"],
        kafka_pid=k.get("pid"),
        pg_pid=p.get("pid"),
        kafka_log=Path(k["log"]) if k.get("log") else None,
        pg_log=Path(p["log"]) if p.get("log") else None,
        pg_data_dir=Path(p["data_dir"]) if p.get("data_dir") else None,
        already_running=already_running,
    )


def port_is_free(port: int) -> bool:
    """SO_REUSEADDR like the servers themselves, so TIME_WAIT leftovers do not count as busy."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_port(avoid: Iterable[int] = (), rng: random.Random | None = None) -> int:
    rng = rng or random.SystemRandom()
    taken = RESERVED_PORTS | set(avoid)
    for _ in range(500):
        port = rng.randrange(*PORT_RANGE)
        if port not in taken and port_is_free(port):
            return port
    raise StackError(f"no free TCP port on 127.0.0.1 in {PORT_RANGE[0]}-{PORT_RANGE[1] - 1}")


def choose_port(requested: int | None, previous: int | None, avoid: Iterable[int] = ()) -> int:
    """Keep the previous port when possible, so exported env vars stay valid across restarts."""
    avoid = set(avoid)
    if requested is not None:
        if requested in avoid or not port_is_free(requested):
            raise StackError(f"port {requested} on 127.0.0.1 is already in use")
        return requested
    if previous and previous not in RESERVED_PORTS | avoid and port_is_free(previous):
        return previous
    return pick_port(avoid)


def env_port(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise StackError(f"{name}={value!r} is not a port number") from None


def parse_java_major(text: str) -> int | None:
    """``openjdk version "17.0.15"`` -> 17; the pre-9 scheme ``"1.8.0_392"`` -> 8."""
    m = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2)) if major == 1 and m.group(2) else major


def prerequisite_message(missing: list[str]) -> str:
    """One message naming everything at once, so a fresh machine needs one install round."""
    return f"the local dev stack is missing: {'; '.join(missing)}. Install with: {INSTALL_HINT}"


def find_java() -> str | None:
    home = os.environ.get("JAVA_HOME")
    if home and os.access(Path(home) / "bin" / "java", os.X_OK):
        return str(Path(home) / "bin" / "java")
    return shutil.which("java")


@dataclass
class Tools:
    java: str = ""
    pg_bin: Path | None = None
    pg_version: str = ""
