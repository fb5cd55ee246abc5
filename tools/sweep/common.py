"""What the three sweep scripts share: tmpfs mounts, one result record per case, and the
printed table with its JSON file. Run a sweep as ``python tools/sweep/<area>.py``; this module
is found beside it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

#: Outcome categories, in the order the tables list them.
CATEGORIES = ("correct", "clean error", "traceback", "crash", "hang", "silent wrong", "files left behind")


def mount_tmpfs(folder: Path, options: str) -> bool:
    """Mount a small tmpfs on ``folder`` (root only); False when that is not possible."""
    if os.name != "posix" or not shutil.which("mount") or os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


def record(case, category: str, rc, stdout: str, stderr: str, t0: float, *, leftovers=(), message_ok=None,
           note: str = "") -> dict:
    """One case's result: its category, exit code, the last stderr line and how long it took."""
    lines = [x for x in (stderr or "").strip().splitlines() if x.strip()]
    return {"name": case.name, "group": case.group, "category": category, "exit_code": rc, "message_ok": message_ok,
            "leftovers": list(leftovers), "note": note,
            "message": (lines[-1] if lines else (stdout or "").strip()[-200:])[:300],
            "stderr_tail": "\n".join(lines[-25:])[-2500:], "seconds": round(time.perf_counter() - t0, 2)}


def report(results: list, code: str, json_path: Path, notes=()) -> None:
    """Print the outcome table and write every result to ``json_path``."""
    counts = Counter(r["category"] for r in results)
    vague = sum(1 for r in results if r["category"] == "clean error" and r.get("message_ok") is False)
    print(f"\ncode under test: {code}")
    print(f"{'outcome':<20}{'cases':>6}")
    for c in (*CATEGORIES, "skipped"):
        if c in CATEGORIES or counts.get(c):
            print(f"{c:<20}{counts.get(c, 0):>6}")
    print(f"{'total':<20}{len(results):>6}")
    print(f"(clean errors whose message misses the input or the fix, or with another exit code: {vague})")
    for n in notes:
        print(f"({n})")
    json_path.write_text(json.dumps({"code": code, "counts": dict(counts), "vague_messages": vague,
                                     "cases": results}, indent=1) + "\n")
    print(f"wrote {json_path}")
