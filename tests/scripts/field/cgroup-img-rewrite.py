#!/usr/bin/env python3
"""Rewrites the container's cgroup in a CRIU cgroup image, decoded as JSON by
`crit decode` (images/cgroup.proto): every member path and the dumped cgroup
directory tree under OLD move to NEW, and cgns_prefix follows, as CRIU's own
--cgroup-root does (criu/cgroup.c rewrite_cgsets) when runc passes it.

    crit decode -i cgroup.img -o cgroup.json
    cgroup-img-rewrite.py cgroup.json OLD NEW      (edits cgroup.json in place)
    crit encode -i cgroup.json -o cgroup.img

OLD and NEW are cgroup paths from the hierarchy root, e.g.
/system.slice/docker-<old id>.scope and /system.slice/docker-<new id>.scope.
With OLD "auto", the source container's cgroup is taken from the image: the
cgroup-namespace root (cgns_prefix) of the root task's set.
"""
import json
import sys


def under(path, root):
    return path == root or path.startswith(root + "/")


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    name, old, new = sys.argv[1], sys.argv[2].rstrip("/"), sys.argv[3].rstrip("/")
    with open(name) as f:
        img = json.load(f)
    changed = 0
    for entry in img["entries"]:
        if old == "auto":
            roots = {m["path"][: m["cgns_prefix"]] for s in entry.get("sets", []) for m in s.get("ctls", []) if m.get("cgns_prefix")}
            if len(roots) != 1:
                sys.exit(f"cannot tell the container's cgroup from cgns prefixes {sorted(roots)}: give OLD")
            old = roots.pop()
        for cgset in entry.get("sets", []):
            for member in cgset.get("ctls", []):
                if under(member["path"], old):
                    member["path"] = new + member["path"][len(old):]
                    if member.get("cgns_prefix"):
                        member["cgns_prefix"] = len(new)
                    changed += 1
        for controller in entry.get("controllers", []):
            for top in controller.get("dirs", []):
                changed += rename_dirs(top, old.lstrip("/"), new.lstrip("/"))
    with open(name, "w") as f:
        json.dump(img, f, indent=1)
    print(f"{name}: {changed} paths moved from {old} to {new}", file=sys.stderr)
    if not changed:
        sys.exit(1)


def rename_dirs(d, old, new):
    """dir_name holds the path from the hierarchy root (no leading /)."""
    n = 0
    if under(d["dir_name"], old):
        d["dir_name"] = new + d["dir_name"][len(old):]
        n += 1
    for child in d.get("children", []):
        n += rename_dirs(child, old, new)
    return n


if __name__ == "__main__":
    main()
