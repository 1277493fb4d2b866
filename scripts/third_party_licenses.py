#!/usr/bin/env python3
"""Prints THIRD_PARTY_LICENSES for the release tarball (scripts/dist.sh): every crate linked
into the named binaries' packages, from `cargo metadata`, with its version, its license
expression and the license texts found in its source directory (in ~/.cargo/registry for
crates.io crates).

    python3 scripts/third_party_licenses.py [--target TRIPLE] PACKAGE...

"Linked in" is the resolve graph from PACKAGE through normal dependencies only, for the
target platform: build scripts' and proc macros' dependencies (build dependencies) run on
the build host and are not in the binary, nor are dev dependencies. Workspace members (Ferry's
own crates, under Ferry's LICENSE) are left out. A crate that declares a license but ships
no license file is listed with a note; the run fails when a crate declares no license at all.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

LICENSE_PREFIXES = ("license", "licence", "copying", "notice", "unlicense", "copyright")


def is_proc_macro(pkg: dict) -> bool:
    """A proc macro runs inside the compiler: neither it nor its dependencies are linked in."""
    return any("proc-macro" in t["kind"] for t in pkg["targets"])


def linked(meta: dict, roots: list[str]) -> list[dict]:
    pkgs = {p["id"]: p for p in meta["packages"]}
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    by_name = {p["name"]: p["id"] for p in meta["packages"] if p["id"] in meta["workspace_members"]}
    missing = [r for r in roots if r not in by_name]
    if missing:
        sys.exit(f"third_party_licenses: not workspace packages: {', '.join(missing)}")
    seen: set[str] = set()
    todo = [by_name[r] for r in roots]
    while todo:
        pid = todo.pop()
        if pid in seen or is_proc_macro(pkgs[pid]):
            continue
        seen.add(pid)
        for dep in nodes[pid]["deps"]:
            # kind None: a normal dependency (the others: "dev", "build").
            if any(k.get("kind") is None for k in dep["dep_kinds"]):
                todo.append(dep["pkg"])
    members = set(meta["workspace_members"])
    out = [pkgs[p] for p in seen if p not in members]
    return sorted(out, key=lambda p: (p["name"], p["version"]))


def license_files(pkg: dict) -> list[Path]:
    d = Path(pkg["manifest_path"]).parent
    files = [
        f
        for f in d.iterdir()
        if f.is_file() and f.name.lower().startswith(LICENSE_PREFIXES)
    ]
    if pkg.get("license_file"):
        f = d / pkg["license_file"]
        if f.is_file() and f not in files:
            files.append(f)
    return sorted(files)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default=None, help="target triple (cargo metadata --filter-platform)")
    ap.add_argument("packages", nargs="+")
    a = ap.parse_args()
    cmd = ["cargo", "metadata", "--format-version", "1", "--locked"]
    if a.target:
        cmd += ["--filter-platform", a.target]
    meta = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    crates = linked(meta, a.packages)
    bad = [f"{p['name']} {p['version']}" for p in crates if not (p.get("license") or p.get("license_file"))]
    if bad:
        sys.exit(f"third_party_licenses: no license declared by: {', '.join(bad)}")

    w = sys.stdout.write
    w(f"Third-party software linked into {' and '.join(a.packages)}\n")
    w("=" * 72 + "\n\n")
    w(f"{len(crates)} crates, from `cargo metadata` (normal dependencies, for the target).\n")
    w("Summary (name, version, license expression):\n\n")
    width = max(len(p["name"]) for p in crates)
    for p in crates:
        w(f"  {p['name']:<{width}}  {p['version']:<10}  {p.get('license') or 'see file: ' + p['license_file']}\n")
    for p in crates:
        w("\n" + "=" * 72 + "\n")
        w(f"{p['name']} {p['version']}\nLicense: {p.get('license') or p.get('license_file')}\n")
        if p.get("repository"):
            w(f"Source: {p['repository']}\n")
        files = license_files(p)
        if not files:
            w("(no license file in the published crate; the license expression above applies)\n")
        for f in files:
            w("-" * 72 + f"\n{f.name}:\n\n")
            w(f.read_text(encoding="utf-8", errors="replace").rstrip() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
