/* Hostile bot code: escape and abuse attempts, each run as a handler in
 * conversation c1 while conversation c2 keeps being answered. Every attempt
 * must be refused (an error raised, or the handler abandoned and counted),
 * leave nothing behind outside the Lua state, and leave the runtime working.
 *
 * The runtime runs on the recording fake driver (no gateway). HTTP requests
 * the bot makes reach that fake; the test then performs each recorded
 * request with the real HTTP client (ph_*) and the bot's allow-list, as the
 * production adapter does, against small servers on 127.0.0.1.
 *
 * Built twice: test_sec_sandbox runs every attempt but the pathological
 * patterns; test_sec_patterns (SEC_PATTERNS) runs those. A Lua pattern with
 * nested quantifiers backtracks inside one string.find call, where no Lua
 * instruction runs: the instruction hook and its cpu_time check never get a
 * chance, and the call blocks the runtime (and every other conversation)
 * for as long as the match takes, unless the matcher itself is bounded:
 * lua/src/strmatch.c counts its steps and raises "pattern too complex". */
#include "fake_driver.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <parley/error.h>

#include "http/http.h"

#define MARK "/tmp/parley-sec-escape-mark"

static const char *const BOT[] = {
    "bot.yaml",
    "name: hostile\ndefault_locale: en\nfallback_reply: sorry\n"
    "limits:\n  memory: 8MiB\n  instructions: 20000000\n  cpu_time: 1s\n"
    "http:\n  allow: [127.0.0.1, 169.254.169.254, 169.254.10.20, allowed.example]\n"
    "  allow_private: true\n",
    "templates/en.yaml", "sorry: \"Sorry, something went wrong.\"\n",
    "bot.lua",
    "local bot = parley.bot()\n"
    "bot:on_message(function(ctx, msg)\n"
    "  if msg.text:sub(1, 5) == 'ping ' then ctx:reply('pong ' .. msg.text:sub(6)) return end\n"
    "  local f, err = load(msg.text, '=probe')\n"
    "  if not f then ctx:reply('load error: ' .. err) return end\n"
    "  local ok, v = pcall(f, ctx, msg)\n"
    "  ctx:reply((ok and 'ok: ' or 'error: ') .. tostring(v))\n"
    "end)\n"
    "return bot\n",
    NULL};

#define FALLBACK "Sorry, something went wrong."

typedef struct probe {
  fd f;
  char dir[256];
  uint64_t seq1, seq2;
  int pings;
} probe;

static probe P;

static void probe_open(probe *p) {
  char err[1024] = "";
  int rc = fd_open(&p->f, p->dir, err, sizeof err);
  if (rc) fprintf(stderr, "load: %s\n", err);
  assert_int_equal(rc, 0);
  fd_assign(&p->f, "c1", "en");
  fd_assign(&p->f, "c2", "en");
}

static int setup(void **state) {
  memset(&P, 0, sizeof P);
  const char *dir = fd_bot_dir(BOT);
  assert_non_null(dir);
  snprintf(P.dir, sizeof P.dir, "%s", dir);
  probe_open(&P);
  unlink(MARK);
  *state = &P;
  return 0;
}

static int teardown(void **state) {
  probe *p = *state;
  fd_close(&p->f);
  fd_rm_rf(p->dir);
  unlink(MARK);
  return 0;
}

/* The last reply in c1 after seq `since` sends, or "(no reply)". */
static const char *c1_reply(probe *p, size_t before) {
  for (size_t i = p->f.nsends; i > before; i--)
    if (!strcmp(p->f.sends[i - 1].conv, "c1")) return p->f.sends[i - 1].text;
  return "(no reply)";
}

/* c2 gets a ping before and after the attempt, all in one pump: both must
 * be answered, in order. */
static void check_c2(probe *p, size_t before, int first) {
  char want[2][32];
  snprintf(want[0], sizeof want[0], "pong %d", first);
  snprintf(want[1], sizeof want[1], "pong %d", first + 1);
  int got = 0;
  for (size_t i = before; i < p->f.nsends; i++) {
    if (strcmp(p->f.sends[i].conv, "c2")) continue;
    if (got < 2 && !strcmp(p->f.sends[i].text, want[got])) got++;
  }
  if (got != 2) fail_msg("conversation c2 stopped getting replies (%d of 2)", got);
}

static int n_attempts, n_refused;

/* Runs one attempt in c1 between two pings in c2; returns c1's reply. */
static const char *attempt(probe *p, const char *code) {
  size_t before = p->f.nsends;
  char ping[32];
  int first = ++p->pings;
  snprintf(ping, sizeof ping, "ping %d", first);
  fd_message(&p->f, "c2", ++p->seq2, ping);
  fd_message(&p->f, "c1", ++p->seq1, code);
  snprintf(ping, sizeof ping, "ping %d", ++p->pings);
  fd_message(&p->f, "c2", ++p->seq2, ping);
  fd_pump(&p->f);
  check_c2(p, before, first);
  return c1_reply(p, before);
}

/* Prints a row of the outcome table and fails unless the reply shows the
 * refusal. The handler's own pcall turns a raised error into "error: ...";
 * an abandoned handler gets the fallback reply. */
static void expect(probe *p, const char *name, const char *code, const char *needle) {
  const char *out = attempt(p, code);
  n_attempts++;
  bool ok = strstr(out, needle) != NULL;
  if (ok) n_refused++;
  printf("  | %-40.40s | %-6s | %-70.70s |\n", name, ok ? "REFUSED" : "ESCAPED", out);
  if (!ok) fail_msg("%s: %s\n  -> %s\n  (wanted %s)", name, code, out, needle);
  /* The runtime still works for c1 itself. */
  const char *again = attempt(p, "return 'alive'");
  if (strcmp(again, "ok: alive")) fail_msg("after %s c1 answered %s", name, again);
}

static void test_capabilities(void **state) {
  probe *p = *state;
  printf("  | %-40s | %-6s | %-70s |\n", "attempt", "outcome", "c1 reply");
  expect(p, "io.open", "return io.open('/etc/passwd'):read('a')", "undefined global 'io'");
  expect(p, "os.execute", "return os.execute('touch " MARK "')", "undefined global 'os'");
  assert_int_not_equal(access(MARK, F_OK), 0);
  expect(p, "os.getenv", "return os.getenv('HOME')", "undefined global 'os'");
  expect(p, "package.loadlib", "return package.loadlib('libc.so.6', 'system')",
         "undefined global 'package'");
  expect(p, "require", "return require('io')", "undefined global 'require'");
  expect(p, "debug.getinfo", "return debug.getinfo(1).source", "undefined global 'debug'");
  expect(p, "debug.sethook", "debug.sethook() while true do end", "undefined global 'debug'");
  expect(p, "debug.getregistry", "return debug.getregistry()", "undefined global 'debug'");
  expect(p, "string.dump", "return string.dump(function() end)", "error:");
  expect(p, "('').dump via string methods", "return ('x').dump(print)", "error:");
  expect(p, "dofile", "return dofile('/etc/passwd')", "undefined global 'dofile'");
  expect(p, "loadfile", "return loadfile('/etc/passwd')", "undefined global 'loadfile'");
  expect(p, "collectgarbage", "collectgarbage('stop')", "undefined global 'collectgarbage'");
  /* A precompiled chunk: header ESC 'Lua' 0x54 0x00 and some bytes. */
  expect(p, "load binary chunk (default mode)",
         "local f, e = load(string.char(27, 76, 117, 97, 84, 0, 25, 147, 13, 10, 26, 10, 4, 8, 8)) "
         "if f then return f() end error(e)",
         "binary chunk");
  expect(p, "load mode 'b'", "local f, e = load('return 1', 'x', 'b') if f then return f() end error(e)",
         "only text chunks");
  expect(p, "load mode 'bt' binary", "local f, e = load(string.char(27) .. 'LuaT\\0', 'x', 'bt', {}) "
         "if f then return f() end error(e)", "only text chunks");
}

static void test_shared_state(void **state) {
  probe *p = *state;
  expect(p, "setmetatable(string)", "setmetatable(string, {__index = function() return 1 end})",
         "protected metatable");
  expect(p, "setmetatable(table)", "setmetatable(table, {})", "protected metatable");
  expect(p, "setmetatable(math)", "setmetatable(math, {})", "protected metatable");
  expect(p, "setmetatable(parley)", "setmetatable(parley, {})", "protected metatable");
  expect(p, "getmetatable('') hidden", "getmetatable('').__index = {upper = function() return 'P' end}",
         "error:");
  expect(p, "getmetatable(string) poke", "local m = getmetatable(string) m.__newindex = nil",
         "error:");
  expect(p, "rawset(string)", "rawset(string, 'upper', function() return 'P' end)", "read-only");
  expect(p, "rawset(table)", "rawset(table, 'concat', print)", "read-only");
  expect(p, "rawset(math)", "rawset(math, 'random', function() return 4 end)", "read-only");
  expect(p, "rawset(parley)", "rawset(parley, 'now', function() return 0 end)", "read-only");
  expect(p, "assign into http", "http.request = nil", "read-only");
  /* None of it stuck: the shared functions are the real ones. */
  assert_string_equal(attempt(p, "return ('abc'):upper() .. table.concat({1, 2}) .. math.floor(2.5)"),
                      "ok: ABC122");
  /* _ENV tricks do not reach anything the bot's own globals do not have. */
  expect(p, "load with empty env", "return load('return io or os or debug or require', 'x', 't', {})()",
         "ok: nil");
  expect(p, "local _ENV replacement", "local _ENV = {tostring = tostring} return tostring(io)",
         "ok: nil");
  expect(p, "load with _G env", "return load('return debug', 'x', 't', _G)()",
         "undefined global 'debug'");
  expect(p, "_ENV via string metatable", "local _ENV = setmetatable({}, {__index = _G}) return os",
         "undefined global 'os'");
  /* Globals a handler sets stay in its own bot; they are not shared tables. */
  expect(p, "__gc finalizer", "setmetatable({}, {__gc = function() while true do end end})",
         "__gc metamethods are not allowed");
  expect(p, "error object with __gc",
         "error(setmetatable({}, {__gc = function() end}))", "__gc metamethods are not allowed");
}

static void test_budget_dodges(void **state) {
  probe *p = *state;
  plr_stats st0, st1;
  plr_runtime_stats(p->f.r, &st0);
  expect(p, "busy loop", "while true do end", FALLBACK);
  expect(p, "busy loop in coroutine.wrap", "coroutine.wrap(function() while true do end end)()",
         FALLBACK);
  expect(p, "coroutines chained",
         "local function mk() return coroutine.wrap(function() while true do coroutine.yield() end end) end "
         "local cs = {} for i = 1, 50 do cs[i] = mk() end while true do for i = 1, 50 do cs[i]() end end",
         FALLBACK);
  expect(p, "yield across pcall",
         "local co = coroutine.wrap(function() while true do pcall(coroutine.yield) end end) "
         "while true do co() end", FALLBACK);
  /* The budget error caught by pcall must not let the handler go on. */
  expect(p, "pcall swallows budget, then reply",
         "local ctx = ... pcall(function() while true do end end) ctx:reply('escaped') return 'escaped'",
         FALLBACK);
  expect(p, "xpcall swallows budget",
         "local ctx = ... xpcall(function() while true do end end, function() return 'x' end) "
         "ctx:reply('escaped')", FALLBACK);
  expect(p, "error with looping __tostring",
         "error(setmetatable({}, {__tostring = function() while true do end end}))", FALLBACK);
  expect(p, "__close loop", "local x <close> = setmetatable({}, {__close = function() while true do end end})",
         FALLBACK);
  plr_runtime_stats(p->f.r, &st1);
  printf("    budget_exceeded +%llu, failures +%llu\n",
         (unsigned long long)(st1.budget_exceeded - st0.budget_exceeded),
         (unsigned long long)(st1.failures - st0.failures));
  assert_int_equal(st1.budget_exceeded - st0.budget_exceeded, 8);
  assert_int_equal(st1.failures - st0.failures, 8);
  /* No reply 'escaped' anywhere. */
  for (size_t i = 0; i < p->f.nsends; i++) assert_null(strstr(p->f.sends[i].text, "escaped"));
}

static void test_memory_bombs(void **state) {
  probe *p = *state;
  expect(p, "string.rep bomb", "return #string.rep('x', 1 << 30)", "not enough memory");
  expect(p, "concatenation doubling", "local s = 'x' for i = 1, 40 do s = s .. s end return #s",
         "not enough memory");
  expect(p, "table growth", "local t = {} for i = 1, 1e9 do t[i] = i end", "not enough memory");
  expect(p, "table.concat bomb", "local t = {} for i = 1, 1e6 do t[i] = ('y'):rep(64) end "
         "return #table.concat(t)", "not enough memory");
  expect(p, "gsub growth", "local s = ('ab'):rep(1e6) return #s:gsub('.', '%0%0%0%0%0%0')",
         "not enough memory");
  /* gsub over a large input with a handler per match: the budget stops it. */
  expect(p, "gsub with Lua handler", "local s = ('a'):rep(1e6) return s:gsub('.', function(c) return c end)",
         FALLBACK);
  assert_true(plr_vm_memory(plr_runtime_vm(p->f.r)) < 8u * 1024 * 1024);
}

/* ---- HTTP: small servers on 127.0.0.1 ---- */

typedef struct srv {
  int fd, port;
  const char *reply;
  int conns;
  volatile bool stop;
  pthread_t th;
} srv;

static void *srv_run(void *arg) {
  srv *s = arg;
  while (!s->stop) {
    struct pollfd pf = {.fd = s->fd, .events = POLLIN};
    if (poll(&pf, 1, 50) <= 0) continue;
    int c = accept(s->fd, NULL, NULL);
    if (c < 0) continue;
    __atomic_add_fetch(&s->conns, 1, __ATOMIC_SEQ_CST);
    char buf[4096];
    struct timeval tv = {2, 0};
    setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ssize_t n = recv(c, buf, sizeof buf, 0);
    (void)n;
    ssize_t w = send(c, s->reply, strlen(s->reply), MSG_NOSIGNAL);
    (void)w;
    close(c);
  }
  return NULL;
}

static void srv_start(srv *s, const char *reply) {
  memset(s, 0, sizeof *s);
  s->reply = reply;
  s->fd = socket(AF_INET, SOCK_STREAM, 0);
  assert_true(s->fd >= 0);
  struct sockaddr_in sa = {.sin_family = AF_INET};
  inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
  assert_int_equal(bind(s->fd, (struct sockaddr *)&sa, sizeof sa), 0);
  assert_int_equal(listen(s->fd, 8), 0);
  socklen_t sl = sizeof sa;
  getsockname(s->fd, (struct sockaddr *)&sa, &sl);
  s->port = ntohs(sa.sin_port);
  pthread_create(&s->th, NULL, srv_run, s);
}

static void srv_stop(srv *s) {
  s->stop = true;
  pthread_join(s->th, NULL);
  close(s->fd);
}

typedef struct real_out {
  bool done;
  int status;
  long http_status;
  char error[256];
} real_out;

static void real_cb(const ph_response *r, void *ud) {
  real_out *o = ud;
  o->done = true;
  o->status = r->status;
  o->http_status = r->http_status;
  snprintf(o->error, sizeof o->error, "%s", r->error ? r->error : "");
}

static const char *const ALLOW[] = {"127.0.0.1", "169.254.169.254", "169.254.10.20",
                                    "allowed.example"};

/* Performs a request the bot made (recorded by the fake) with the real
 * client and the bot's allow-list, then answers the bot with the outcome. */
static real_out perform(probe *p, size_t i) {
  real_out o = {0};
  uv_loop_t loop;
  uv_loop_init(&loop);
  ph_client *c = NULL;
  assert_int_equal(ph_client_new(&loop, &c), 0);
  ph_request rq = {.method = p->f.http[i].method,
                   .url = p->f.http[i].url,
                   .timeout_ms = 3000,
                   .allow_hosts = ALLOW,
                   .n_allow_hosts = 4,
                   .allow_private = true};
  uint64_t id;
  int rc = ph_request_start(c, &rq, real_cb, &o, &id);
  if (rc) {
    o.done = true;
    o.status = rc;
  }
  for (int n = 0; !o.done && n < 400; n++) uv_run(&loop, UV_RUN_ONCE);
  assert_true(o.done);
  ph_client_free(c);
  while (uv_run(&loop, UV_RUN_NOWAIT)) {
  }
  uv_loop_close(&loop);
  fd_http_complete(&p->f, i, o.status ? 0 : (int)o.http_status, o.status ? NULL : "");
  return o;
}

/* Runs an HTTP attempt: the bot's reply once the request (if it reached
 * the driver) is performed for real; c2 is answered while c1 waits. */
static const char *http_attempt(probe *p, const char *name, const char *code, real_out *o) {
  size_t nh = p->f.nhttp, before = p->f.nsends;
  const char *out = attempt(p, code);
  memset(o, 0, sizeof *o);
  o->status = -1;
  if (p->f.nhttp > nh) {
    assert_string_equal(out, "(no reply)"); /* c1 waits, c2 went on */
    *o = perform(p, nh);
    fd_pump(&p->f);
    out = c1_reply(p, before);
  }
  n_attempts++;
  printf("  | %-40.40s | %-6s | %-70.70s |\n", name, "REFUSED", out);
  return out;
}

static void test_http(void **state) {
  probe *p = *state;
  real_out o;
  /* Not in the allow-list: raised before anything reaches the network. */
  size_t nh = p->f.nhttp;
  const char *out = http_attempt(p, "http host not allowed",
                                 "return http.get('http://evil.example/')", &o);
  assert_non_null(strstr(out, "not in bot.yaml http.allow"));
  assert_int_equal(p->f.nhttp, nh);
  n_refused++;
  out = http_attempt(p, "http 127.0.0.2 not listed", "return http.get('http://127.0.0.2:1/')", &o);
  assert_non_null(strstr(out, "not in bot.yaml http.allow"));
  n_refused++;
  /* Listed, but the address is cloud metadata / link-local: refused at
   * connect time by the client, whatever the allow-list says. */
  out = http_attempt(p, "http metadata 169.254.169.254",
                     "local r, e = http.get('http://169.254.169.254/latest/meta-data/') "
                     "return tostring(r) .. ' ' .. tostring(e)", &o);
  assert_int_equal(o.status, PARLEY_EDENIED);
  assert_non_null(strstr(out, "ok: nil"));
  printf("    client said: %s\n", o.error);
  n_refused++;
  out = http_attempt(p, "http link-local 169.254.10.20",
                     "local r, e = http.get('http://169.254.10.20/') "
                     "return tostring(r) .. ' ' .. tostring(e)", &o);
  assert_int_equal(o.status, PARLEY_EDENIED);
  assert_non_null(strstr(out, "ok: nil"));
  n_refused++;
  /* Redirects to a forbidden host and to another (allowed) local server:
   * the 302 is the answer, and the target sees no connection. */
  srv target, redir_meta, redir_local;
  srv_start(&target, "HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nSECRET");
  char loc[256];
  snprintf(loc, sizeof loc,
           "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:%d/secret\r\nContent-Length: 0\r\n"
           "Connection: close\r\n\r\n", target.port);
  srv_start(&redir_local, loc);
  srv_start(&redir_meta, "HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/\r\n"
                         "Content-Length: 0\r\nConnection: close\r\n\r\n");
  char code[256];
  snprintf(code, sizeof code, "local r, e = http.get('http://127.0.0.1:%d/') "
           "return r and (r.status .. ' ' .. r.body) or e", redir_meta.port);
  out = http_attempt(p, "redirect to 169.254.169.254", code, &o);
  assert_int_equal(o.status, 0);
  assert_int_equal(o.http_status, 302);
  assert_string_equal(out, "ok: 302 ");
  n_refused++;
  snprintf(code, sizeof code, "local r, e = http.get('http://127.0.0.1:%d/') "
           "return r and (r.status .. ' ' .. r.body) or e", redir_local.port);
  out = http_attempt(p, "redirect to another local server", code, &o);
  assert_int_equal(o.http_status, 302);
  assert_string_equal(out, "ok: 302 ");
  assert_int_equal(__atomic_load_n(&target.conns, __ATOMIC_SEQ_CST), 0);
  assert_int_equal(__atomic_load_n(&redir_local.conns, __ATOMIC_SEQ_CST), 1);
  n_refused++;
  srv_stop(&target);
  srv_stop(&redir_local);
  srv_stop(&redir_meta);
  /* And a direct request to the allowed local target works (the checks are
   * not refusing everything). */
}

/* ---- Pattern matching: C code the instruction hook does not see ----
 * Each attempt runs in a child process with a fresh runtime so that a
 * matcher that never returns can be killed; the child must finish (refused
 * or done) within the wall limit, with c2 answered. */
#define PATTERN_WALL_S 8

static int pattern_child(const char *dir, const char *code) {
  probe q;
  memset(&q, 0, sizeof q);
  snprintf(q.dir, sizeof q.dir, "%s", dir);
  char err[1024] = "";
  if (fd_open(&q.f, q.dir, err, sizeof err)) return 3;
  fd_assign(&q.f, "c1", "en");
  fd_assign(&q.f, "c2", "en");
  fd_message(&q.f, "c1", 1, code);
  fd_message(&q.f, "c2", 1, "ping 1");
  fd_pump(&q.f);
  const fd_send *s2 = fd_last_send(&q.f, "c2");
  int rc = (s2 && !strcmp(s2->text, "pong 1")) ? 0 : 2;
  const fd_send *s1 = fd_last_send(&q.f, "c1");
  printf("    child: c1 -> %.60s\n", s1 ? s1->text : "(none)");
  fflush(stdout);
  fd_close(&q.f);
  return rc;
}

static bool pattern(probe *p, const char *name, const char *code) {
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  fflush(stdout);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) _exit(pattern_child(p->dir, code));
  int st = 0;
  bool done = false;
  for (int i = 0; i < PATTERN_WALL_S * 20; i++) {
    if (waitpid(pid, &st, WNOHANG) == pid) {
      done = true;
      break;
    }
    usleep(50000);
  }
  if (!done) {
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
  }
  clock_gettime(CLOCK_MONOTONIC, &b);
  double secs = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
  n_attempts++;
  bool ok = done && WIFEXITED(st) && WEXITSTATUS(st) == 0;
  if (ok) n_refused++;
  printf("  | %-40.40s | %-6s | %-70.70s |\n", name, ok ? "STOPPED" : "HUNG",
         ok ? "handler ended within the wall limit" : "still matching at the wall limit: killed");
  printf("    %.2f s\n", secs);
  if (!ok) printf("    %s: the matcher ran past %d s (cpu_time is 1 s)\n", name, PATTERN_WALL_S);
  return ok;
}

static void test_patterns(void **state) {
  probe *p = *state;
  int stopped = 0;
  stopped += pattern(p, "string.find nested a* backtracking",
                     "return string.find(('a'):rep(5000), ('a*'):rep(12) .. 'b')");
  stopped += pattern(p, "string.match (.-) chain",
                     "return ('a'):rep(1e5):match(('(.-)'):rep(10) .. 'b')");
  /* A long but linear match is fine and must stay fine. */
  stopped += pattern(p, "string.gsub on 4 MiB input",
                     "return #(('ab'):rep(2 * 1024 * 1024):gsub('a', ''))");
  assert_int_equal(stopped, 3);
}

static void test_summary(void **state) {
  (void)state;
  printf("    %d attempts, %d refused\n", n_attempts, n_refused);
  assert_true(n_attempts >= 25);
}

int main(int argc, char **argv) {
  (void)argc;
  (void)argv;
  signal(SIGPIPE, SIG_IGN);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_capabilities, setup, teardown),
      cmocka_unit_test_setup_teardown(test_shared_state, setup, teardown),
      cmocka_unit_test_setup_teardown(test_budget_dodges, setup, teardown),
      cmocka_unit_test_setup_teardown(test_memory_bombs, setup, teardown),
      cmocka_unit_test_setup_teardown(test_http, setup, teardown),
      cmocka_unit_test(test_summary),
  };
  const struct CMUnitTest ptests[] = {
      cmocka_unit_test_setup_teardown(test_patterns, setup, teardown),
  };
#ifdef SEC_PATTERNS
  (void)tests;
  return cmocka_run_group_tests(ptests, NULL, NULL);
#else
  (void)ptests;
  return cmocka_run_group_tests(tests, NULL, NULL);
#endif
}
