#!/usr/bin/env python3
"""Fails when an #include crosses a layer that docs/internals.md forbids.

The rules are not written here: they are the table between the markers
<!-- layers:begin --> and <!-- layers:end --> in docs/internals.md, which
this script parses, so the page and the check cannot drift apart. Each row
names a layer, the paths it owns, the layers it may include and the
external headers it may include.

For every .c and .h file under a layer's paths (the longest matching path
decides the layer of a file), every #include is resolved the way the
compiler does for this tree:

  "x.h"        the including file's folder first, then the include roots
               (sdk/include, lua/include, sdk/src, lua/src, gateway/src);
               found in more than one root is an error (which one the
               compiler takes would depend on the target's -I order);
  <parley/x.h> sdk/include or lua/include;
  *.pb-c.h     the code protobuf-c generates from proto/, layer "proto";
  <other>      an external header, checked against the row's external
               column: "libc" (the C and POSIX headers listed below), a
               header name, a "prefix/*" pattern, or "*" for any.

A quoted include that resolves nowhere is an error too, so a moved header
cannot slip through as "external".

Usage: check_includes.py SOURCE_DIR [--rules docs/internals.md]
Exit 0 when every include is allowed, 1 with one line per violation.
"""
import os
import re
import sys

ROOTS = ["sdk/include", "lua/include", "sdk/src", "lua/src", "gateway/src"]

LIBC = set("""
assert.h complex.h ctype.h errno.h fenv.h float.h inttypes.h iso646.h limits.h
locale.h math.h setjmp.h signal.h stdalign.h stdarg.h stdatomic.h stdbool.h
stddef.h stdint.h stdio.h stdlib.h stdnoreturn.h string.h tgmath.h threads.h
time.h uchar.h wchar.h wctype.h
aio.h arpa/inet.h dirent.h dlfcn.h fcntl.h fnmatch.h glob.h grp.h iconv.h
langinfo.h libgen.h net/if.h netdb.h netinet/in.h netinet/tcp.h poll.h
pthread.h pwd.h regex.h sched.h semaphore.h spawn.h strings.h syslog.h
termios.h unistd.h utime.h wordexp.h
sys/file.h sys/ioctl.h sys/mman.h sys/resource.h sys/select.h sys/socket.h
sys/stat.h sys/time.h sys/types.h sys/uio.h sys/un.h sys/utsname.h sys/wait.h
""".split())

INCLUDE_RE = re.compile(r'^\s*#\s*include\s*([<"])([^">]+)[">]')


def parse_rules(path):
    text = open(path, encoding="utf-8").read()
    m = re.search(r"<!-- layers:begin -->(.*?)<!-- layers:end -->", text, re.S)
    if not m:
        sys.exit(f"{path}: no <!-- layers:begin --> ... <!-- layers:end --> table")
    layers = {}
    for line in m.group(1).splitlines():
        line = line.strip()
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) != 5 or cells[0].lower() == "layer":
            continue
        name = cells[0].strip("`")
        paths = re.findall(r"`([^`]+)`", cells[1])
        may = [t for t in re.findall(r"[a-z][a-z-]*", cells[3])]
        ext = [t.strip().strip("`") for t in cells[4].split(",") if t.strip()]
        if not paths:
            sys.exit(f"{path}: layer {name} names no paths")
        layers[name] = {"paths": paths, "may": set(may) | {name}, "ext": ext}
    for name, l in layers.items():
        for other in l["may"]:
            if other not in layers:
                sys.exit(f"{path}: layer {name} may include unknown layer {other}")
    return layers


def layer_of(rel, layers):
    best, best_len = None, -1
    for name, l in layers.items():
        for p in l["paths"]:
            if (rel == p or rel.startswith(p.rstrip("/") + "/")) and len(p) > best_len:
                best, best_len = name, len(p)
    return best


def ext_allowed(header, ext):
    for pat in ext:
        if pat == "*":
            return True
        if pat == "libc" and header in LIBC:
            return True
        if pat.endswith("/*") and header.startswith(pat[:-1]):
            return True
        if pat == header:
            return True
    return False


def resolve(src, rel_file, kind, name):
    """Returns (layer-path, None) for a file in the tree, ("", None) for an
    external header, or (None, error)."""
    if name.endswith(".pb-c.h"):
        return "proto/" + os.path.basename(name), None
    if kind == '"':
        here = os.path.normpath(os.path.join(os.path.dirname(rel_file), name))
        if os.path.isfile(os.path.join(src, here)):
            return here, None
        found = [os.path.join(r, name) for r in ROOTS if os.path.isfile(os.path.join(src, r, name))]
        if len(found) > 1:
            return None, f'"{name}" is ambiguous: {", ".join(found)}'
        if found:
            return found[0], None
        return None, f'"{name}" resolves to no file of the tree'
    if name.startswith("parley/"):
        for r in ("sdk/include", "lua/include"):
            if os.path.isfile(os.path.join(src, r, name)):
                return os.path.join(r, name), None
        return None, f"<{name}> is no public header"
    return "", None


def main():
    args = sys.argv[1:]
    if not args:
        sys.exit(__doc__)
    src = os.path.abspath(args[0])
    rules = os.path.join(src, "docs/internals.md")
    if "--rules" in args:
        rules = os.path.abspath(args[args.index("--rules") + 1])
    layers = parse_rules(rules)
    bad, n_files, n_incl = [], 0, 0
    scanned = set()
    for name, l in layers.items():
        for p in l["paths"]:
            full = os.path.join(src, p)
            files = [full] if os.path.isfile(full) else []
            for d, _, fs in os.walk(full):
                files += [os.path.join(d, f) for f in fs if f.endswith((".c", ".h"))]
            for f in files:
                rel = os.path.relpath(f, src)
                if rel in scanned or layer_of(rel, layers) is None:
                    continue
                scanned.add(rel)
                mine = layer_of(rel, layers)
                n_files += 1
                with open(f, encoding="utf-8", errors="replace") as fh:
                    for lineno, line in enumerate(fh, 1):
                        m = INCLUDE_RE.match(line)
                        if not m:
                            continue
                        n_incl += 1
                        kind, inc = m.group(1), m.group(2)
                        target, err = resolve(src, rel, kind, inc)
                        shown = f'"{inc}"' if kind == '"' else f"<{inc}>"
                        if err:
                            bad.append(f"{rel}:{lineno}: {err}")
                            continue
                        if target == "":
                            if not ext_allowed(inc, layers[mine]["ext"]):
                                bad.append(f"{rel}:{lineno}: layer {mine} may not include "
                                           f"the external header {shown} (allowed: "
                                           f"{', '.join(layers[mine]['ext'])})")
                            continue
                        theirs = layer_of(target, layers)
                        if theirs is None:
                            bad.append(f"{rel}:{lineno}: {shown} ({target}) is in no layer")
                        elif theirs not in layers[mine]["may"]:
                            bad.append(f"{rel}:{lineno}: layer {mine} may not include {shown} "
                                       f"of layer {theirs} (allowed: "
                                       f"{', '.join(sorted(layers[mine]['may']))})")
    for b in bad:
        print(b)
    rel_rules = os.path.relpath(rules, src)
    if bad:
        print(f"check_includes: {len(bad)} include(s) cross a layer; the rules are the table "
              f"in {rel_rules}")
        return 1
    print(f"check_includes: {n_incl} includes in {n_files} files of {len(layers)} layers "
          f"follow {rel_rules}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
