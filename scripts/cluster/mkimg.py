#!/usr/bin/env python3
"""Write a container image as a docker-archive tarball (for `ctr images import`), no Docker.

    mkimg.py OUT.tar TAG [options]
      --bin SRC:DEST          host executable + every shared library `ldd` lists (and the loader)
      --file SRC:DEST         a regular file, or a directory copied recursively
      --link TARGET:DEST      a symlink
      --dir DEST[:MODE]       an empty directory (default mode 1777 for writable scratch dirs)
      --entrypoint JSON  --cmd JSON  --env K=V  --user UID[:GID]  --workdir DIR

One layer, deterministic (sorted entries, mtime 0, root-owned), so the same inputs give the same
image id. The archive is rewritten only when its inputs (paths, sizes, mtimes, options) changed:
OUT.tar.inputs keeps their fingerprint, which makes a warm `scripts/cluster.sh up` cheap, and
OUT.tar.tag the image's name.
"""
import argparse
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile


def ldd_libs(path):
    """Absolute paths of the shared libraries `path` loads; [] for a static binary."""
    out = subprocess.run(["ldd", path], capture_output=True, text=True)
    if out.returncode != 0:  # "not a dynamic executable"
        return []
    libs = []
    for line in out.stdout.splitlines():
        if "not found" in line:
            sys.exit(f"mkimg: {path} needs a library ldd cannot find: {line.strip()}")
        m = re.search(r"(/\S+)\s+\(0x", line)
        if m:
            libs.append(m.group(1))
    return libs


def collect(args):
    """Map of image path -> (kind, source/target, mode)."""
    entries = {}

    def add_file(src, dest):
        if os.path.isdir(src):
            for d, dirs, files in os.walk(src):
                dirs.sort()
                for n in sorted(files):
                    p = os.path.join(d, n)
                    add_file(p, os.path.join(dest, os.path.relpath(p, src)))
            return
        if not os.path.isfile(src):
            sys.exit(f"mkimg: {src}: no such file")
        entries[dest] = ("file", os.path.realpath(src), None)

    for spec in args.bin:
        src, dest = spec.split(":", 1)
        add_file(src, dest)
        for lib in ldd_libs(src):
            entries.setdefault(lib, ("file", os.path.realpath(lib), None))
            # The loader path (/lib64/ld-linux-x86-64.so.2) is a symlink on Debian: keep its name.
    for spec in args.file:
        src, dest = spec.split(":", 1)
        add_file(src, dest)
    for spec in args.link:
        target, dest = spec.split(":", 1)
        entries[dest] = ("link", target, None)
    for spec in args.dir:
        dest, _, mode = spec.partition(":")
        entries[dest] = ("dir", None, int(mode or "1777", 8))
    return entries


def fingerprint(args, entries):
    h = hashlib.sha256(json.dumps(vars(args), sort_keys=True).encode())
    for dest in sorted(entries):
        kind, src, mode = entries[dest]
        st = os.stat(src) if kind == "file" else None
        h.update(json.dumps([dest, kind, src, mode, st and st.st_size, st and st.st_mtime_ns]).encode())
    return h.hexdigest()


def layer_tar(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        # Every parent directory, explicitly, so the layer does not depend on extraction defaults.
        dirs = {}
        for dest, (kind, _, mode) in entries.items():
            p = os.path.dirname(dest.rstrip("/"))
            while p not in ("", "/"):
                dirs.setdefault(p, 0o755)
                p = os.path.dirname(p)
            if kind == "dir":
                dirs[dest] = mode
        items = [(d, ("dir", None, m)) for d, m in dirs.items()]
        items += [(d, e) for d, e in entries.items() if e[0] != "dir"]
        for dest, (kind, src, mode) in sorted(items):
            ti = tarfile.TarInfo(dest.lstrip("/"))
            ti.mtime = 0
            if kind == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, mode
                t.addfile(ti)
            elif kind == "link":
                ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, src, 0o777
                t.addfile(ti)
            else:
                st = os.stat(src)
                ti.size, ti.mode = st.st_size, st.st_mode & 0o7777
                with open(src, "rb") as f:
                    t.addfile(ti, f)
    return buf.getvalue()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("tag")
    for opt in ("bin", "file", "link", "dir", "env"):
        ap.add_argument("--" + opt, action="append", default=[])
    ap.add_argument("--entrypoint", default="null")
    ap.add_argument("--cmd", default="null")
    ap.add_argument("--user", default="")
    ap.add_argument("--workdir", default="/")
    args = ap.parse_args()

    entries = collect(args)
    fp = fingerprint(args, entries)
    stamp = args.out + ".inputs"
    fresh = all(os.path.exists(f) for f in (args.out, stamp, args.out + ".tag"))
    if fresh and open(stamp).read() == fp:
        print(f"mkimg: {args.tag} up to date")
        return
    layer = layer_tar(entries)
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": json.loads(args.entrypoint),
            "Cmd": json.loads(args.cmd),
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"] + args.env,
            "User": args.user,
            "WorkingDir": args.workdir,
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }
    cfg = json.dumps(config, sort_keys=True).encode()
    cid = hashlib.sha256(cfg).hexdigest()
    tmp = args.out + ".tmp"
    with tarfile.open(tmp, "w") as t:
        def add(name, data):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))

        add("layer.tar", layer)
        add(cid + ".json", cfg)
        add("manifest.json", json.dumps(
            [{"Config": cid + ".json", "RepoTags": [args.tag], "Layers": ["layer.tar"]}]).encode())
    os.replace(tmp, args.out)
    with open(stamp, "w") as f:
        f.write(fp)
    with open(args.out + ".tag", "w") as f:
        f.write(args.tag)
    print(f"mkimg: {args.tag} -> {args.out} ({len(layer) // 1024} KiB, config {cid[:12]})")


if __name__ == "__main__":
    main()
