"""Audit log: one JSON line per `qeval compare` / `qeval calibrate` run, written for every run that
got past parsing its flags — a verdict, bad input found later, or a crash.

Each line says who ran what on which weights and items, and what came out: time (UTC, when the run
started), user, host, qeval version, the command and the flags it was given (`argv`; paths are kept:
they are not PHI), the run directory,
the model and each variant with a fingerprint, each task's id, version, content hash, item count
and item-set hash (sha256 of its sorted sample ids), the verdict, the per-candidate verdicts, the
exit code and the duration. It never holds text: no prompt, option, passage, reference or output,
and for a failed run only the exception's class name — never its message, which could quote input.

The log is `$QEVAL_AUDIT_LOG`, else `<cache>/audit.jsonl`. Several processes may share it: a line
is appended under an exclusive `flock`, in one write, then fsync'ed.
"""

from __future__ import annotations

import datetime as _dt
import getpass
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from qeval.settings import audit_path

AUDIT_SCHEMA = "qeval.audit/1"


def item_set_hash(ids) -> str:
    """sha256 of the sorted sample (or passage) ids, one per line: the same items, the same hash."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


def variant_fingerprint(key: str, identity: dict | None) -> str:
    """sha256 of the variant's key and its backend identity (device, library versions, artefact
    or file digests): what decides the numbers it produces."""
    payload = json.dumps({"key": key, "identity": identity}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name (a container's uid without a passwd entry)
        return f"uid:{os.getuid()}" if hasattr(os, "getuid") else "unknown"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def command_line(ctx=None) -> list[str]:
    """The command as given: `qeval <command>` and the flags set on the command line (or from the
    environment), in the command's own order, each with its value as given — file paths included —
    and nothing added (no defaults). `ctx`: the command's typer.Context; without one, sys.argv."""
    import sys

    if ctx is None:
        return ["qeval", *sys.argv[1:]]
    out = ["qeval", ctx.info_name or ""]
    for p in ctx.command.params:
        source = ctx.get_parameter_source(p.name)
        if getattr(source, "name", None) not in ("COMMANDLINE", "ENVIRONMENT"):
            continue
        value = ctx.params.get(p.name)
        if p.param_type_name != "option":
            out.append(str(value))
        elif getattr(p, "is_flag", False) and isinstance(value, bool):
            if value:
                out.append(p.opts[0])
            elif p.secondary_opts:
                out.append(p.secondary_opts[0])
        else:
            out.extend([p.opts[0], str(value)])
    return out


class Trail:
    """What a run has established so far; the CLI fills it in as the run proceeds, and whatever
    is known when it ends goes into the audit line."""

    def __init__(self, command: str, cfg, argv: list[str]):
        self.command = command
        self.cfg = cfg
        self.argv = argv
        self.time = _now()
        self._t0 = time.perf_counter()
        self.run_dir: Path | None = None
        self.model = None  # models.ResolvedModel
        self.tasks = None  # list[types.Task]
        self.factory = None  # backends.engines.EngineFactory (for variant identities)
        self.result = None  # pipeline.CompareResult
        self.exit_code = 0  # the verdict's, once the body knows it (a typer.Exit sets it too)

    def variants(self) -> list[dict]:
        from qeval.run.config import floor_replica

        cfg = self.cfg
        roles = [("baseline", cfg.baseline)]
        if cfg.noise_floor:
            roles.append(("noise_floor", floor_replica(cfg.baseline, cfg.noise_floor)))
        roles += [("candidate", c) for c in cfg.candidates]
        out = []
        for role, v in roles:
            identity = None
            if self.factory is not None:
                try:
                    identity = self.factory.identity(v)
                except Exception:  # the run failed on this variant; its identity stays unknown
                    identity = None
            out.append({"role": role, "name": v.name, "key": v.key(),
                        "fingerprint": None if identity is None else variant_fingerprint(v.key(), identity)})
        return out

    def _tasks(self) -> list[dict]:
        if self.tasks is None:
            return [{"id": t, "version": None, "content_hash": None, "n": None, "item_set_sha256": None}
                    for t in self.cfg.tasks]
        return [{"id": t.spec.id, "version": t.spec.version, "kind": t.spec.kind,
                 "content_hash": t.content_hash, "n": t.size(),
                 "item_set_sha256": item_set_hash([p.id for p in t.passages] + [s.id for s in t.samples])}
                for t in self.tasks]

    def entry(self, *, exit_code: int, error: BaseException | None) -> dict[str, Any]:
        from qeval.util.versions import QEVAL_VERSION as __version__

        res = self.result if error is None else None
        tasks = self._tasks()
        known = [t for t in tasks if t["item_set_sha256"] is not None]
        return {
            "schema": AUDIT_SCHEMA,
            "time": self.time,
            "user": _user(),
            "host": socket.gethostname(),
            "qeval_version": __version__,
            "command": self.command,
            "argv": self.argv,
            "run_dir": None if self.run_dir is None else str(Path(self.run_dir).absolute()),
            "model": {"spec": self.cfg.model,
                      "fingerprint": None if self.model is None else self.model.fingerprint},
            "variants": self.variants(),
            "tasks": tasks,
            "item_set_sha256": (item_set_hash(f"{t['id']}:{t['item_set_sha256']}" for t in known)
                                if self.tasks is not None else None),
            "outcome": "ok" if error is None else "error",
            "error": None if error is None else type(error).__name__,  # never the message
            "verdict": None if res is None else res.verdict.decision.value,
            "per_candidate": None if res is None else {k: v.value for k, v in res.verdict.per_candidate.items()},
            "exit_code": exit_code,
            "duration_s": round(time.perf_counter() - self._t0, 3),
        }


def append(entry: dict, path: Path | None = None) -> Path:
    """Append one line atomically: exclusive flock, one write, fsync."""
    path = path or audit_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(entry, sort_keys=True, ensure_ascii=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        try:
            import fcntl
        except ImportError:  # not POSIX: O_APPEND alone
            fcntl = None
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    return path


@contextmanager
def audited(command: str, cfg, *, bad_input: tuple[type[BaseException], ...], bad_input_code: int,
            ctx=None, warn=None, argv: list[str] | None = None) -> Iterator[Trail]:
    """Run the body and append its audit line whatever happens. The exit code comes from the
    typer.Exit the body raises (`trail.exit_code` when it returns), `bad_input_code` for `bad_input` exceptions
    and 1 for anything else. An audit log that cannot be written is reported
    through `warn(message)` and does not change the run's outcome."""
    import typer

    trail = Trail(command, cfg, argv if argv is not None else command_line(ctx))
    error: BaseException | None = None
    code = 0
    try:
        yield trail
        code = trail.exit_code
    except typer.Exit as exc:
        code = exc.exit_code
        raise
    except BaseException as exc:
        error = exc
        code = bad_input_code if isinstance(exc, bad_input) else 1  # Ctrl-C too: click aborts with 1
        raise
    finally:
        try:
            append(trail.entry(exit_code=code, error=error))
        except Exception as exc:  # noqa: BLE001 - the audit must never hide the run's own outcome
            if warn is not None:
                reason = getattr(exc, "strerror", None) or type(exc).__name__
                warn(f"audit log {audit_path()} not written ({reason})")
