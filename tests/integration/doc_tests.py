#!/usr/bin/env python3
"""Runs the code blocks of a doc page as a test, in a fresh directory.

Each fenced block of the page is preceded by an HTML comment that says what
it is (the comment does not show when the page is rendered):

  <!-- doc-test: file PATH -->        the block is written to PATH
  <!-- doc-test: run -->              `$ command` lines run in order (a block
                                      without `$` runs as a script); the lines
                                      after a command are its expected output
  <!-- doc-test: run-tty INPUT -->    the same, at a pseudo-terminal fed INPUT
  <!-- doc-test: output-of COMMAND -->  the block is the output of COMMAND
  <!-- doc-test: files-exist DIR -->  the block lists files that exist
  <!-- doc-test: config-check KIND [VAR=value...] -->  `parley config check
                                      --kind KIND` says ok for the block
  <!-- doc-test: c-compile -->        the block compiles as the body of a
                                      function (with the SDK's headers)

A block without such a comment fails the test: every example runs.
Expected output lines must appear in the actual output, in order (other
lines may come between them: logs, timing); trailing spaces, conversation
ids and queue waiting times are normalised. The gateway port of the page
(8470) is replaced by a free one so that runs do not collide. Commands
ending in `&` run in the background until the end.

usage: doc_tests.py PARLEY_BIN_DIR PAGE.md [SOURCE_DIR]
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

BLOCK = re.compile(r"(<!-- doc-test: (.*?)\s*-->\n *)?```(\w*)\n(.*?)```", re.S)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def norm(line):
    line = line.rstrip()
    line = re.sub(r"console-[0-9a-f]{6,}", "console-ID", line)
    line = re.sub(r"waiting=\d+s", "waiting=Ns", line)
    return line


def commands(body):
    """Splits a block into (command, expected lines) pairs."""
    out, cmd, exp = [], None, []
    lines = body.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("$ "):
            if cmd is not None:
                out.append((cmd, exp))
            cmd, exp = line[2:], []
            # A command goes on after a trailing backslash or pipe.
            while cmd.rstrip().endswith(("\\", "|")) and i + 1 < len(lines):
                i += 1
                cmd += "\n" + lines[i]
        elif cmd is not None and line.strip():
            exp.append(line)
        i += 1
    if cmd is not None:
        out.append((cmd, exp))
    return out


def contains_in_order(actual, expected):
    """Returns the first expected line not found (in order), or None."""
    act = [norm(l) for l in actual.split("\n")]
    j = 0
    for e in expected:
        e = norm(e)
        while j < len(act) and act[j] != e:
            j += 1
        if j == len(act):
            return e
        j += 1
    return None


def main():
    bindir, page = os.path.abspath(sys.argv[1]), sys.argv[2]
    src = os.path.abspath(sys.argv[3]) if len(sys.argv) > 3 else None
    text = open(page, encoding="utf-8").read()
    port = str(free_port())
    work = tempfile.mkdtemp(prefix="parley-doc-")
    env = dict(os.environ, PATH=bindir + os.pathsep + os.environ["PATH"], NO_COLOR="1")
    background = []
    deferred = []  # files-exist checks, once every block has run
    failures = 0
    checked = 0

    def fail(n, what):
        nonlocal failures
        failures += 1
        print(f"FAIL {page} block {n}: {what}")

    try:
        for n, m in enumerate(BLOCK.finditer(text), 1):
            directive, lang, body = m.group(2), m.group(3), m.group(4)
            # A block inside a list item is indented with the item.
            indent = re.match(r" *", body).group(0)
            if indent:
                body = "\n".join(l[len(indent):] if l.startswith(indent) else l
                                 for l in body.split("\n"))
            body = body.replace("8470", port)
            if not directive:
                fail(n, f"no doc-test comment before the ```{lang} block")
                continue
            kind, _, arg = directive.strip().partition(" ")
            if "\n" in kind:
                kind, _, rest = kind.partition("\n")
                arg = rest + arg
            checked += 1
            if kind == "file":
                path = os.path.join(work, arg)
                os.makedirs(os.path.dirname(path) or work, exist_ok=True)
                with open(path, "w", encoding="utf-8") as f:
                    f.write(body)
            elif kind == "config-check":
                words = arg.split()
                ckenv = dict(env)
                for w in words[1:]:
                    k, _, v = w.partition("=")
                    ckenv[k] = v
                path = os.path.join(work, f"block{n}.yaml")
                with open(path, "w", encoding="utf-8") as f:
                    f.write(body)
                r = subprocess.run(["parley", "config", "check", path, "--kind", words[0]],
                                   cwd=work, env=ckenv, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, timeout=60)
                if r.returncode != 0 or r.stdout.strip() != "ok":
                    fail(n, f"config check --kind {words[0]}: {r.stdout}")
            elif kind == "c-compile":
                if not src:
                    fail(n, "c-compile needs the source folder")
                    continue
                path = os.path.join(work, f"block{n}.c")
                with open(path, "w", encoding="utf-8") as f:
                    f.write("#include <stdio.h>\n#include <stdint.h>\n#include <parley/error.h>\n"
                            "#include \"config/config.h\"\n"
                            "int doc_example(const char *path);\n"
                            "int doc_example(const char *path) {\n" + body + "\n  return 0;\n}\n")
                r = subprocess.run(["cc", "-std=c11", "-fsyntax-only", "-Wall", "-Werror",
                                    "-Wno-unused-variable", "-Wno-unused-but-set-variable",
                                    "-I", os.path.join(src, "sdk/include"),
                                    "-I", os.path.join(src, "sdk/src"), path],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                if r.returncode != 0:
                    fail(n, f"does not compile:\n{r.stdout}")
            elif kind == "files-exist":
                deferred.append((n, arg, body))
            elif kind == "output-of":
                r = subprocess.run(arg, shell=True, cwd=work, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, timeout=120)
                miss = contains_in_order(r.stdout, body.split("\n"))
                if miss is not None:
                    fail(n, f"`{arg}` did not print {miss!r}:\n{r.stdout}")
            elif kind in ("run", "run-tty"):
                pairs = commands(body)
                if not pairs:
                    pairs = [(body, [])]
                for cmd, exp in pairs:
                    if cmd.rstrip().endswith("&"):
                        log = open(os.path.join(work, f"bg{len(background)}.log"), "w+")
                        p = subprocess.Popen(cmd.rstrip()[:-1], shell=True, cwd=work, env=env,
                                             stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True)
                        background.append(p)
                        deadline = time.time() + 15
                        while True:
                            log.seek(0)
                            out = log.read()
                            if contains_in_order(out, exp) is None:
                                break
                            if time.time() > deadline or p.poll() is not None:
                                fail(n, f"`{cmd}` did not print {exp}:\n{out}")
                                break
                            time.sleep(0.1)
                        time.sleep(0.5)  # let it connect before the next command
                        continue
                    if kind == "run-tty":
                        run = ["script", "-qec", cmd, "/dev/null"]
                        r = subprocess.run(run, cwd=work, env=env, input=arg + "\n",
                                           capture_output=True, text=True, timeout=60)
                        out = r.stdout.replace("\r", "")
                    else:
                        r = subprocess.run(cmd, shell=True, cwd=work, env=env,
                                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                           text=True, timeout=120)
                        out = r.stdout
                    if r.returncode != 0:
                        fail(n, f"`{cmd}` exited {r.returncode}:\n{out}")
                        continue
                    miss = contains_in_order(out, exp)
                    if miss is not None:
                        fail(n, f"`{cmd}` did not print {miss!r}:\n{out}")
            else:
                fail(n, f"unknown doc-test kind {kind!r}")
        for n, arg, body in deferred:
            for line in body.split("\n")[1:]:
                name = line.strip()
                if name and not os.path.exists(os.path.join(work, arg, name)):
                    fail(n, f"{arg}/{name} was not written by the page")
    finally:
        for p in background:
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=10)
            except Exception:
                pass
        shutil.rmtree(work, ignore_errors=True)
    print(f"{page}: {checked} blocks, {failures} failed")
    return 1 if failures or not checked else 0


if __name__ == "__main__":
    sys.exit(main())
