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
  <!-- doc-test: c-compile runtime --> the same with the Lua runtime's
                                      runtime.h, given uv_loop_t *loop and
                                      const char *token
  <!-- doc-test: output-shape COMMAND -->  like output-of, but a sample line
                                      `name{labels} value` matches any value
                                      and `...` lines are skipped (metrics)
  <!-- doc-test: http-request HOST:PORT -->  the block is a raw HTTP request
                                      (Content-Length is computed): sent
  <!-- doc-test: http-response -->    the block is the answer to the last
                                      request: same status line, headers, and
                                      JSON body with the same keys
  <!-- doc-test: lua-top DIR -->      the block is Lua appended to DIR/bot.lua
                                      (bot-level code: registrations, dialogs),
                                      after which `parley lint DIR` must pass,
                                      and then it runs: `parley test DIR` plays
                                      spec steps that reach what it registered
                                      (below), and a handler that fails (a
                                      wrong API, a missing template) fails it
  <!-- doc-test: lua-handler DIR -->  the same, as the body of a command
                                      handler function(ctx, msg, args) that a
                                      customer's "/docN" runs
    Lines after the first of a lua-* comment say how it runs. For lua-top
    they are spec steps (docs/lua-api.md, "Specs"), with expectations if
    wanted; `- timer: NAME LUA-DATA` fires the bot's timer NAME with that
    data (through a hidden command that arms it). Without them, each
    bot:command of the block is sent, bot:on_open gets `open: {}`, and each
    bot:on_timer fires with no data; a block that registers nothing of that
    kind must give steps. For lua-handler they are Lua put before the block
    in the handler: the values the example takes as given (`local resp =
    {status = 503}`).
  <!-- doc-test: example REASON -->   not run, and says why (a formula)

Comments that stand alone, not before a block, run in page order:

  <!-- doc-test-run: COMMANDS -->     hidden setup (a trailing & backgrounds)
  <!-- doc-test-replace: A => B -->   A in every later block reads as B

A block without such a comment fails the test: every example runs.
Expected output lines must appear in the actual output, in order (other
lines may come between them: logs, timing); trailing spaces, conversation
ids and queue waiting times are normalised. The gateway port of the page
(8470) is replaced by a free one so that runs do not collide. Commands
ending in `&` run in the background until the end.

usage: doc_tests.py PARLEY_BIN_DIR PAGE.md [SOURCE_DIR]
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

BLOCK = re.compile(r"(<!-- doc-test: (.*?)\s*-->\n *)?```(\w*)\n(.*?)```"
                   r"|<!-- doc-test-(run|replace):\s*(.*?)\s*-->", re.S)


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


def lua_top_steps(n, body, extra):
    """The spec steps that run a lua-top block, and the Lua of the hidden
    commands they use; None when the block needs explicit steps."""
    lines = extra.split("\n") if extra else []
    if not lines:
        for cmd in re.findall(r'bot:command\("(/[^"\s]+)"', body):
            lines.append(f'- send: "{cmd}"')
        if "bot:on_open(" in body:
            lines.append("- open: {}")
        for name in re.findall(r'bot:on_timer\("([^"]+)"', body):
            lines.append(f"- timer: {name}")
        if not lines:
            return None
    steps, helpers = [], ""
    for i, line in enumerate(lines):
        m = re.match(r"- timer: (\S+)\s*(.*)$", line)
        if not m:
            steps.append(line)
            continue
        cmd = f"/doc{n}-timer{i}"
        data = m.group(2).strip() or "nil"
        helpers += (f'bot:command("{cmd}", function(ctx) ctx:after(0, "{m.group(1)}", {data}) '
                    f"end)\n")
        steps += [f'- send: "{cmd}"', "- wait: 1"]
    return steps, helpers


def run_lua_block(work, env, botdir, n, steps):
    """Runs one block's steps as a spec case; None when it passed, else
    what `parley test` said (with the bot's log)."""
    spec = os.path.join(work, botdir, f"doc-block-{n}.yaml")
    with open(spec, "w", encoding="utf-8") as f:
        f.write(f"- name: block {n}\n  steps:\n")
        f.write("".join("    " + l + "\n" for l in "\n".join(steps).split("\n")))
    r = subprocess.run(["parley", "test", botdir, spec], cwd=work, env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=120)
    os.unlink(spec)
    if r.returncode == 0 and f"PASS {spec}: block {n}" in r.stdout.replace(work + "/", ""):
        return None
    if r.returncode == 0 and re.search(rf"PASS \S*: block {n}\b", r.stdout):
        return None
    return r.stdout


def main():
    bindir, page = os.path.abspath(sys.argv[1]), sys.argv[2]
    src = os.path.abspath(sys.argv[3]) if len(sys.argv) > 3 else None
    text = open(page, encoding="utf-8").read()
    port = str(free_port())
    ops_port = str(free_port())
    replacements = []
    last_response = None
    work = tempfile.mkdtemp(prefix="parley-doc-")
    env = dict(os.environ, PATH=bindir + os.pathsep + os.environ["PATH"], NO_COLOR="1",
               PARLEY_SRC=src or "")
    background = []
    deferred = []  # files-exist checks, once every block has run
    failures = 0
    checked = 0

    def fail(n, what):
        nonlocal failures
        failures += 1
        print(f"FAIL {page} block {n}: {what}")

    try:
        def subst(t):
            for a, b in replacements:
                t = t.replace(a, b)
            return t.replace("8470", port).replace("9090", ops_port)

        n = 0
        for m in BLOCK.finditer(text):
            if m.group(5) == "replace":
                a, _, b = m.group(6).partition(" => ")
                replacements.append((a, b))
                continue
            if m.group(5) == "run":
                for cmd in subst(m.group(6)).split("\n"):
                    cmd = cmd.strip()
                    if not cmd:
                        continue
                    if cmd.endswith("&"):
                        log = open(os.path.join(work, f"bg{len(background)}.log"), "w+")
                        background.append(subprocess.Popen(cmd[:-1], shell=True, cwd=work, env=env,
                                                           stdout=log, stderr=subprocess.STDOUT,
                                                           start_new_session=True))
                        time.sleep(1)
                    else:
                        r = subprocess.run(cmd, shell=True, cwd=work, env=env, timeout=120,
                                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                           text=True)
                        if r.returncode != 0:
                            fail(n, f"setup `{cmd}` exited {r.returncode}:\n{r.stdout}")
                continue
            n += 1
            directive, lang, body = m.group(2), m.group(3), m.group(4)
            if directive:
                directive = subst(directive)
            # A block inside a list item is indented with the item.
            indent = re.match(r" *", body).group(0)
            if indent:
                body = "\n".join(l[len(indent):] if l.startswith(indent) else l
                                 for l in body.split("\n"))
            body = subst(body)
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
            elif kind in ("lua-top", "lua-handler"):
                # Blocks of a page share one bot: what an earlier block
                # declared (a dialog, a local) is there for the later ones.
                botdir, _, extra = arg.partition("\n")
                botdir = botdir.strip()
                extra = textwrap.dedent(extra).strip("\n")
                path = os.path.join(work, botdir, "bot.lua")
                if kind == "lua-top":
                    code, steps = body, lua_top_steps(n, body, extra)
                else:
                    code = (f'bot:command("/doc{n}", function(ctx, msg, args)\n'
                            f'{extra}\n{body}end)\n')
                    steps = ([f'- send: "/doc{n}"'], "")
                with open(path, "a", encoding="utf-8") as f:
                    f.write(f"-- block {n}\n{code}{steps[1] if steps else ''}")
                r = subprocess.run(["parley", "lint", botdir], cwd=work, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   timeout=60)
                if r.returncode != 0:
                    fail(n, f"`parley lint {botdir}` with the block:\n{r.stdout}\n{body}")
                    continue
                if steps is None:
                    fail(n, "a lua-top block that registers no command, on_open or on_timer "
                            "needs spec steps that run it (lines after the doc-test line)")
                    continue
                # The block runs against the bot as it is now (a later
                # block may register what takes the same messages).
                out = run_lua_block(work, env, botdir, n, steps[0])
                if out is not None:
                    fail(n, f"ran it with `parley test`:\n{out}\n{body}")
            elif kind == "example":
                checked -= 1  # not run; the reason is in the page
                if not arg:
                    fail(n, "example needs a reason")
            elif kind == "output-shape":
                r = subprocess.run(arg, shell=True, cwd=work, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, timeout=60)
                got = [norm(l) for l in r.stdout.split("\n")]
                for line in body.split("\n"):
                    line = norm(line)
                    if not line or line == "...":
                        continue
                    if line.startswith("#"):
                        ok = line in got
                    else:
                        key = line.rsplit(" ", 1)[0] + " "
                        ok = any(g.startswith(key) for g in got)
                    if not ok:
                        fail(n, f"`{arg}` has no line like {line!r}:\n{r.stdout}")
                        break
            elif kind == "http-request":
                host, _, hport = arg.rpartition(":")
                head, _, payload = body.partition("\n\n")
                lines = head.split("\n")
                req = lines[0] + " HTTP/1.1\r\nHost: " + host + "\r\n"
                req += "".join(l + "\r\n" for l in lines[1:] if l)
                data = payload.rstrip("\n").encode()
                req = (req.encode() + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(data)
                       + data)
                try:
                    with socket.create_connection((host, int(hport)), timeout=30) as sock:
                        sock.sendall(req)
                        chunks = []
                        while True:
                            c = sock.recv(65536)
                            if not c:
                                break
                            chunks.append(c)
                    last_response = b"".join(chunks).decode("utf-8", "replace")
                except OSError as e:
                    fail(n, f"cannot send the request to {arg}: {e}")
            elif kind == "http-response":
                if last_response is None:
                    fail(n, "no request before this response")
                    continue
                want_head, _, want_body = body.partition("\n\n")
                got_head, _, got_body = last_response.partition("\r\n\r\n")
                wl = want_head.split("\n")
                gl = got_head.split("\r\n")
                if not gl[0].endswith(wl[0]):
                    fail(n, f"status {gl[0]!r}, the page says {wl[0]!r}")
                for h in wl[1:]:
                    if h and h.lower() not in (g.lower() for g in gl):
                        fail(n, f"no header {h!r} in {gl}")
                try:
                    wj, gj = json.loads(want_body), json.loads(got_body)
                    if sorted(wj) != sorted(gj):
                        fail(n, f"body keys {sorted(gj)}, the page shows {sorted(wj)}")
                    for k in ("conversation", "duplicate"):
                        if k in wj and wj[k] != gj.get(k):
                            fail(n, f"{k} is {gj.get(k)!r}, the page shows {wj[k]!r}")
                except ValueError as e:
                    fail(n, f"body is not the JSON shown: {e}: {got_body!r}")
            elif kind == "c-compile":
                if not src:
                    fail(n, "c-compile needs the source folder")
                    continue
                path = os.path.join(work, f"block{n}.c")
                # `c-compile runtime`: the Lua runtime's embedding API, with
                # the loop and the token an embedder has at hand.
                runtime = arg.strip() == "runtime"
                head = ("#include <stdio.h>\n#include <stdint.h>\n#include <parley/error.h>\n"
                        "#include \"config/config.h\"\n")
                sig = "int doc_example(const char *path)"
                if runtime:
                    # libuv's header needs POSIX types (as the build defines).
                    head = ("#define _GNU_SOURCE\n" + head +
                            "#include <uv.h>\n#include <parley/runtime.h>\n")
                    sig = "int doc_example(uv_loop_t *loop, const char *token)"
                with open(path, "w", encoding="utf-8") as f:
                    f.write(head + sig + ";\n" + sig + " {\n" + body + "\n  return 0;\n}\n")
                r = subprocess.run(["cc", "-std=c11", "-fsyntax-only", "-Wall", "-Werror",
                                    "-Wno-unused-variable", "-Wno-unused-but-set-variable",
                                    "-I", os.path.join(src, "sdk/include"),
                                    "-I", os.path.join(src, "sdk/src"),
                                    "-I", os.path.join(src, "lua/include"), path],
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
