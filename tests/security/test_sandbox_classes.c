/* Hostile bot code and hostile customers, by class of attack (see
 * docs/reliability.md, "Threat model"). Each attack runs in a child process
 * with a fresh runtime on the recording fake driver (no gateway): one or
 * more events in conversation c1, then a ping in conversation c2. The
 * attack is held when, within the wall limit, the child
 *   - did not crash or hang (a crash or a hang of the runtime stops every
 *     conversation of the bot),
 *   - answered c2's ping after the attack (other conversations go on),
 *   - and passed the attack's own check: c1's last reply shows the
 *     refusal, no send carries what must never reach a customer, and so on.
 *
 * The classes (issue numbering): 1 runtime internals reachable from ctx,
 * 2 bot code inside the runtime's own calls, 3 writable library tables,
 * 4 unbounded time inside C functions (also from a customer's text alone),
 * 5 budget escapes through __close and coroutines, 6 yields across C calls
 * with side effects, 7 timers starving the loop, 8 limits the gateway
 * enforces that the runtime did not, 9 forged quotes and URL host checks.
 *
 * Every attack here got through before its fix: a crash, a hang killed at
 * the wall limit, or a check that failed. */
#include "fake_driver.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <parley/error.h>

/* The probe bot: every c1 message is Lua code run as (ctx, msg) inside a
 * pcall, its result or error is the reply. Timers call global functions the
 * probes define. Small limits, as the attacks used; cpu_time is 1 s
 * because a handler's time is read on the monotonic clock, and a shorter
 * one could fail c2's ping handler on a loaded machine. */
#define BOT_YAML_HEAD                                                          \
  "name: hostile\ndefault_locale: en\nfallback_reply: sorry\n"                 \
  "limits:\n  memory: 16MiB\n  instructions: 2000000\n  cpu_time: 1s\n"
static const char BOT_LUA[] =
    "HITS, HELD, CLOSED, SPINS, ONCE, TIMERS, KEPT, CO = false, false, false, 0, 0, false, false, false\n"
    "local bot = parley.bot()\n"
    "bot:on_message(function(ctx, msg)\n"
    "  if msg.text:sub(1, 5) == 'ping ' then\n"
    "    ctx:reply('pong ' .. msg.text:sub(6)) return\n"
    "  end\n"
    "  local f, err = load(msg.text, '=probe')\n"
    "  if not f then ctx:reply('load error: ' .. err) return end\n"
    "  local ok, v = pcall(f, ctx, msg)\n"
    "  ctx:reply((ok and 'ok: ' or 'error: ') .. tostring(v))\n"
    "end)\n"
    "for _, name in ipairs({'spin', 'spin2', 'once'}) do\n"
    "  bot:on_timer(name, function(ctx, data) if TIMERS and TIMERS[name] then TIMERS[name](ctx, data) end end)\n"
    "end\n"
    "return bot\n";

static const char *const BOT[] = {
    "bot.yaml",
    BOT_YAML_HEAD "http:\n  allow: [127.0.0.1, allowed.example, '::1', 1e3]\n  allow_private: true\n",
    "templates/en.yaml", "sorry: \"Sorry, something went wrong.\"\n",
    "bot.lua", BOT_LUA, NULL};

/* A bot that only matches a pattern with %b on what customers write: the
 * customer alone is the attacker. */
static const char *const BOT_MATCH[] = {
    "bot.yaml", BOT_YAML_HEAD,
    "templates/en.yaml", "sorry: \"Sorry, something went wrong.\"\n",
    "bot.lua",
    "local bot = parley.bot()\n"
    "bot:match('%b()', function(ctx, msg) ctx:reply('balanced') end)\n"
    "bot:on_message(function(ctx, msg)\n"
    "  if msg.text:sub(1, 5) == 'ping ' then ctx:reply('pong ' .. msg.text:sub(6)) end\n"
    "end)\n"
    "return bot\n",
    NULL};

#define FALLBACK "Sorry, something went wrong."
#define WALL_S 10

typedef struct attack attack;
/* Extra check in the child; returns NULL when held, else what escaped. */
typedef const char *(*check_fn)(fd *f, const attack *a);

struct attack {
  int cls;
  const char *name;
  const char *steps[4]; /* c1 messages, each a handler; "@paren:N" is N '(' */
  const char *want;     /* in c1's last reply (NULL: not checked) */
  const char *never;    /* in no send of any conversation (NULL: not checked) */
  check_fn check;
  const char *const *bot; /* NULL: BOT */
  double max_s;         /* wall time the steps may take (0: no bound but WALL_S) */
  const char *log;      /* in the runtime's log (the failed handler's error) */
};

static char g_dir[256], g_dir_match[256];

static const char *c1_last(fd *f) {
  const fd_send *s = fd_last_send(f, "c1");
  return s ? s->text : "(no reply)";
}

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* The child: 0 held, 1 escaped (with the reason on stdout). */
static int child(const attack *a) {
  fd f;
  memset(&f, 0, sizeof f);
  char err[1024] = "";
  const char *dir = a->bot == BOT_MATCH ? g_dir_match : g_dir;
  if (fd_open(&f, dir, err, sizeof err)) {
    printf("    load: %s\n", err);
    return 3;
  }
  fd_assign(&f, "c1", "en");
  fd_assign(&f, "c2", "en");
  uint64_t seq = 0;
  double t0 = now_s();
  for (int i = 0; i < 4 && a->steps[i]; i++) {
    const char *code = a->steps[i];
    char *buf = NULL;
    if (!strncmp(code, "@paren:", 7)) {
      size_t n = (size_t)atol(code + 7);
      buf = malloc(n + 1);
      memset(buf, '(', n);
      buf[n] = '\0';
      code = buf;
    }
    fd_message(&f, "c1", ++seq, code);
    fd_pump(&f);
    free(buf);
  }
  double took = now_s() - t0;
  fd_message(&f, "c2", 1, "ping 1");
  fd_pump(&f);
  const fd_send *p = fd_last_send(&f, "c2");
  const char *why = NULL;
  if (!p || strncmp(p->text, "pong 1", 6)) why = "c2 got no answer after the attack";
  else if (a->want && !strstr(c1_last(&f), a->want)) why = "c1's reply does not show the refusal";
  if (!why && a->never)
    for (size_t i = 0; i < f.nsends; i++)
      if (strstr(f.sends[i].text, a->never) || strstr(f.sends[i].quote_excerpt, a->never))
        why = "a send carries what must never be sent";
  if (!why && a->check) why = a->check(&f, a);
  if (!why && a->log) {
    fflush(f.logf);
    if (!strstr(f.log, a->log)) {
      why = "the log does not show the error at the bot's line";
      const char *h = strstr(f.log, "handler failed");
      printf("    log: %.300s\n", h ? h : f.log);
    }
  }
  if (!why && a->max_s > 0 && took > a->max_s) why = "the attack took longer than its bound";
  printf("    c1 -> %.100s (%.3f s)\n", c1_last(&f), took);
  if (why) printf("    ESCAPED: %s\n", why);
  fflush(stdout);
  fd_close(&f);
  return why ? 1 : 0;
}

static int n_run, n_held;

/* Runs one attack in a child; true when held. */
static bool run_attack(const attack *a) {
  printf("  [%d] %s\n", a->cls, a->name);
  fflush(stdout);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) _exit(child(a));
  int st = 0;
  bool done = false;
  for (int i = 0; i < WALL_S * 50; i++) {
    if (waitpid(pid, &st, WNOHANG) == pid) {
      done = true;
      break;
    }
    usleep(20000);
  }
  if (!done) {
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    printf("    ESCAPED: still running at the wall limit (%d s): killed\n", WALL_S);
  } else if (WIFSIGNALED(st)) {
    printf("    ESCAPED: the runtime died of signal %d\n", WTERMSIG(st));
  }
  bool held = done && WIFEXITED(st) && WEXITSTATUS(st) == 0;
  n_run++;
  n_held += held;
  return held;
}

static void run_class(const attack *list, size_t n) {
  int failed = 0;
  for (size_t i = 0; i < n; i++) failed += !run_attack(&list[i]);
  if (failed) fail_msg("%d of %zu attacks got through", failed, n);
}

/* ---- extra checks ---- */

static const char *no_http(fd *f, const attack *a) {
  (void)a;
  return f->nhttp ? "an HTTP request reached the driver" : NULL;
}

static const char *one_http(fd *f, const attack *a) {
  (void)a;
  return f->nhttp == 1 ? NULL : "the allowed request did not reach the driver";
}

static const char *max_12_buttons(fd *f, const attack *a) {
  (void)a;
  for (size_t i = 0; i < f->nsends; i++) {
    int n = 0;
    for (const char *s = f->sends[i].buttons; *s; s++) n += *s == ';';
    if (n > 12) return "a reply with more than 12 buttons was sent";
  }
  return NULL;
}

static const char *state_committed(fd *f, const attack *a) {
  (void)a;
  const fd_commit *c = fd_last_commit(f, "c1");
  if (!c || !strstr(c->state, "k={\"a\":1,\"b\":[1,2]}")) return "the state was not committed as set";
  return NULL;
}

static const char *real_quote(fd *f, const attack *a) {
  (void)a;
  for (size_t i = 0; i < f->nsends; i++)
    if (f->sends[i].quote_seq == 1 &&
        (strcmp(f->sends[i].quote_excerpt, "local ctx, msg = ... return ctx:reply('q', "
                                            "{quote = {seq = msg.seq, text = 'I never said that', "
                                            "sender = 'agent:boss'}})") ||
         strcmp(f->sends[i].quote_sender, "cust")))
      return "a quote shows text or a sender the conversation does not hold";
  return NULL;
}

/* Timers: after the arming handler, a few loop passes must each return
 * (the loop is not starved) while the timers keep firing. */
static const char *timers_fair(fd *f, const attack *a) {
  (void)a;
  for (int i = 0; i < 40; i++) {
    f->now += 1;
    uv_run(&f->loop, UV_RUN_ONCE);
  }
  fd_message(f, "c1", 99, "return SPINS");
  fd_pump(f);
  long spins = atol(c1_last(f) + 4);
  printf("    spins after 40 loop passes: %ld\n", spins);
  if (spins < 4) return "the re-arming timers stopped firing";
  if (spins > 400) return "timers ran many times inside one loop pass";
  return NULL;
}

static const char *timer_twice(fd *f, const attack *a) {
  (void)a;
  for (int i = 0; i < 40; i++) {
    f->now += 1;
    uv_run(&f->loop, UV_RUN_ONCE);
  }
  fd_pump(f);
  fd_message(f, "c1", 99, "return ONCE");
  fd_pump(f);
  return strcmp(c1_last(f), "ok: 2") ? "a timer re-armed from its own handler did not fire again"
                                     : NULL;
}

/* ---- the classes ---- */

static void test_class1_internals(void **state) {
  (void)state;
  static const attack list[] = {
      {1, "ctx._rec is out of reach", {"local ctx = ... return type(ctx._rec)"}, "ok: nil"},
      {1, "ctx._rec.pending poisoned",
       {"local ctx = ... ctx._rec.pending[1] = 'x' return 'poisoned'", "return 'next event'"},
       "ok: next event"},
      {1, "ctx._rec.pending = 42",
       {"local ctx = ... ctx._rec.pending = 42 return 'poisoned'", "return 'next event'"},
       "ok: next event"},
      {1, "pairs(ctx) lists no internals",
       {"local ctx = ... local n = 0 for k in pairs(ctx) do n = n + 1 end return n"}, "error:"},
      {1, "ctx revived with ctx._done = false",
       {"KEPT = ... return 'kept'",
        "KEPT._done = false KEPT:reply('revived') return 'sent'"},
       "error:", "revived"},
      {1, "ctx revived with rawset",
       {"KEPT = ... return 'kept'",
        "rawset(KEPT, '_done', false) KEPT:reply('revived') return 'sent'"},
       "error:", "revived"},
      {1, "ctx fields are not writable",
       {"local ctx = ... ctx.reply = function() end return 'replaced'"}, "cannot be set"},
      {1, "a finished ctx's fields are dead too",
       {"KEPT = ... return 'kept'", "return KEPT.state"}, "ctx used after its handler finished"},
  };
  run_class(list, sizeof list / sizeof list[0]);
}

static void test_class2_runtime_calls(void **state) {
  (void)state;
  static const attack list[] = {
      {2, "__pairs on ctx.state after the handler",
       {"local ctx = ... ctx.state.x = 1 setmetatable(ctx.state, {__pairs = function(t) "
        "HITS = (HITS or 0) + 1 return next, t, nil end}) return 'set'",
        "return HITS"},
       "ok: false"},
      {2, "__len on a state array",
       {"local ctx = ... ctx.state.a = setmetatable({1, 2}, {__len = function() "
        "HITS = (HITS or 0) + 1 return 2 end}) return 'set'",
        "return HITS"},
       "ok: false"},
      {2, "__pairs allocating 64 MiB in the runtime's call",
       {"local ctx = ... ctx.state.x = 1 setmetatable(ctx.state, {__pairs = function(t) "
        "local big = {} for i = 1, 1e6 do big[i] = ('y'):rep(64) .. i end HELD = big "
        "return next, t, nil end}) return 'set'",
        "return HELD and #HELD"},
       "ok: false"},
      {2, "__len makes 16 quick replies count as 1",
       {"local ctx = ... return ctx:reply({quick_replies = {text = 'pick', options = "
        "setmetatable({}, {__len = function() return 1 end, __index = function(_, i) "
        "if i <= 16 then return 'o' .. i end end})}})"},
       "error:", NULL, max_12_buttons},
      {2, "__index serves 16 card buttons",
       {"local ctx = ... return ctx:reply({card = {title = 't', buttons = setmetatable({}, "
        "{__len = function() return 2 end, __index = function(_, i) if i <= 16 then "
        "return {label = 'b' .. i, postback = 'p'} end end})}})"},
       NULL, NULL, max_12_buttons},
      {2, "__index on a reply table runs no bot code",
       {"local ctx = ... ctx:reply(setmetatable({}, {__index = function(_, k) "
        "HITS = (HITS or 0) + 1 if k == 'text' then return 'from __index' end end})) "
        "return 'x'",
        "return HITS"},
       "ok: false", "from __index"},
  };
  run_class(list, sizeof list / sizeof list[0]);
}

static void test_class3_library_tables(void **state) {
  (void)state;
  static const attack list[] = {
      {3, "pairs(string) yields the real table",
       {"local _, real = pairs(string) if type(real) == 'table' then "
        "real.upper = function() return 'PWNED' end end return 'tried'",
        "return ('abc'):upper()"},
       "ok: ABC"},
      {3, "table.concat wrapped under the JSON encoder",
       {"local _, real = pairs(table) if type(real) == 'table' then "
        "real.concat = function() return '{}' end end return 'tried'",
        "local ctx = ... ctx.state.k = {a = 1, b = {1, 2}} return 'set'"},
       "ok: set", NULL, state_committed},
      {3, "utf8.len blinded to let invalid UTF-8 out",
       {"local _, real = pairs(utf8) if type(real) == 'table' then "
        "real.len = function() return 1 end end return 'tried'",
        "local ctx = ... return ctx:reply('bad \\255 byte')"},
       "not valid UTF-8", "bad \xff byte"},
      {3, "string.find blinded to let a NUL out",
       {"local _, real = pairs(string) if type(real) == 'table' then "
        "real.find = function() return nil end end return 'tried'",
        "local ctx = ... return ctx:reply('cut\\0here')"},
       "contains a NUL byte"},
      {3, "math.floor replaced under the encoder",
       {"local _, real = pairs(math) if type(real) == 'table' then "
        "real.type = function() return 'float' end end return 'tried'",
        "local ctx = ... ctx.state.k = {a = 1, b = {1, 2}} return 'set'"},
       "ok: set", NULL, state_committed},
  };
  run_class(list, sizeof list / sizeof list[0]);
}

static void test_class4_c_functions(void **state) {
  (void)state;
  /* cpu_time is 1 s: each must end within 2.5 s (room for a loaded
   * machine), where before they ran for many seconds to hours. */
  static const attack list[] = {
      {4, "table.move over 1e12 slots", {"table.move({}, 1, 1e12, 1) return 'moved'"}, FALLBACK,
       NULL, NULL, NULL, 2.5},
      {4, "table.insert under a huge __len",
       {"local t = setmetatable({}, {__len = function() return 1e12 end}) "
        "table.insert(t, 1, 'x') return 'inserted'"},
       FALLBACK, NULL, NULL, NULL, 2.5},
      {4, "table.remove under a huge __len",
       {"local t = setmetatable({}, {__len = function() return 1e12 end}) "
        "table.remove(t, 1) return 'removed'"},
       FALLBACK, NULL, NULL, NULL, 2.5},
      {4, "plain string.find, quadratic",
       {"local h = ('a'):rep(2e6) local n = ('a'):rep(1e6) .. 'b' "
        "return tostring(h:find(n, 1, true))"},
       NULL, NULL, NULL, NULL, 2.5},
      {4, "%b() over 1 MB of '('", {"return tostring(('('):rep(1e6):find('%b()'))"}, NULL, NULL,
       NULL, NULL, 2.5},
      {4, "a customer's 900 KB of '(' against a %b() bot", {"@paren:900000"}, NULL, NULL, NULL,
       BOT_MATCH, 2.5},
  };
  run_class(list, sizeof list / sizeof list[0]);
}

static void test_class5_budget(void **state) {
  (void)state;
  static const attack list[] = {
      {5, "__close of a wrap body the budget stopped",
       {"coroutine.wrap(function() local x <close> = setmetatable({}, {__close = function() "
        "while true do end end}) while true do end end)() return 'done'"},
       FALLBACK},
      {5, "__close counting past the budget",
       {"pcall(coroutine.wrap(function() local x <close> = setmetatable({}, {__close = function() "
        "for i = 1, 3e7 do CLOSED = i end end}) while true do end end)) return 'done'",
        "return CLOSED"},
       "ok: false"},
      {5, "closing a stopped coroutine in a later handler",
       {"CO = coroutine.create(function() local x <close> = setmetatable({}, {__close = function() "
        "while true do end end}) while true do end end) coroutine.resume(CO) return 'first'",
        "return tostring(coroutine.close(CO))"},
       "ok: false"},
      {5, "wrap in wrap, inner __close loops",
       {"coroutine.wrap(function() coroutine.wrap(function() local x <close> = setmetatable({}, "
        "{__close = function() while true do end end}) while true do end end)() end)() "
        "return 'done'"},
       FALLBACK},
  };
  run_class(list, sizeof list / sizeof list[0]);
}

static void test_class6_yield_across_c(void **state) {
  (void)state;
  static const attack list[] = {
      {6, "http.get from a table.sort comparator",
       {"table.sort({3, 2, 1}, function(a, b) http.get('http://127.0.0.1/x') return a < b end) "
        "return 'sorted'"},
       "inside a C call", NULL, no_http},
      {6, "http.get from a gsub callback",
       {"return (('abc'):gsub('.', function(c) http.get('http://127.0.0.1/x') return c end))"},
       "inside a C call", NULL, no_http},
      {6, "http.get from __tostring under tostring",
       {"return tostring(setmetatable({}, {__tostring = function() "
        "http.get('http://127.0.0.1/x') return 'x' end}))"},
       "inside a C call", NULL, no_http},
      {6, "http.post from a table.sort comparator inside pcall",
       {"local ok, e = pcall(table.sort, {2, 1}, function(a, b) "
        "http.post('http://127.0.0.1/x', 'b') return a < b end) return tostring(e)"},
       "inside a C call", NULL, no_http},
  };
  run_class(list, sizeof list / sizeof list[0]);
}

static void test_class7_timers(void **state) {
  (void)state;
  static const attack list[] = {
      {7, "two timers re-arming with after(0)",
       {"local ctx = ... SPINS = 0 TIMERS = {spin = function(c) SPINS = SPINS + 1 "
        "c:after(0, 'spin') end, spin2 = function(c) SPINS = SPINS + 1 c:after(0, 'spin2') end} "
        "ctx:after(0, 'spin') ctx:after(0, 'spin2') return 'armed'"},
       NULL, NULL, timers_fair},
      {7, "a timer re-arming itself once fires twice",
       {"local ctx = ... ONCE = 0 TIMERS = {once = function(c) ONCE = ONCE + 1 "
        "if ONCE < 2 then c:after(0, 'once') end end} ctx:after(0, 'once') return 'armed'"},
       NULL, NULL, timer_twice},
  };
  run_class(list, sizeof list / sizeof list[0]);
}

static void test_class8_limits(void **state) {
  (void)state;
  static const attack list[] = {
      /* The handler's own error reply fails the same way (the state is
       * still too large), so the handler fails: its error, at the bot's
       * line (bot.lua:10, its ctx:reply), is in the log, and nothing it sent
       * reached the customer. */
      {8, "state at the documented 1 MiB",
       {"local ctx = ... for i = 1, 17 do ctx.state['k' .. i] = ('x'):rep(60000) end "
        "ctx:reply('sent anyway') return 'set'"},
       FALLBACK, "sent anyway", NULL, NULL, 0, "bot.lua:10: ctx.state is larger than"},
      {8, "one state value over 64 KiB, then a reply",
       {"local ctx = ... ctx.state.big = ('x'):rep(70000) ctx:reply('sent anyway') return 'set'"},
       FALLBACK, "sent anyway", NULL, NULL, 0, "bot.lua:10: ctx.state.big is larger than 65536"},
      {8, "65 tags", {"local ctx = ... for i = 1, 65 do ctx:tag('t' .. i) end return 'tagged'"},
       "probe:1: a conversation has at most 64 tags"},
      {8, "a tag with a newline", {"local ctx = ... ctx:tag('a\\nb') return 'tagged'"},
       "probe:1: a tag is a string"},
      {8, "a state key name of 200 bytes",
       {"local ctx = ... ctx.state[('k'):rep(200)] = 1 ctx:reply('sent anyway') return 'set'"},
       FALLBACK, "sent anyway", NULL, NULL, 0, "bot.lua:10: ctx.state key names are 1 to 128 bytes"},
      {8, "200 state keys",
       {"local ctx = ... for i = 1, 200 do ctx.state['k' .. i] = i end ctx:reply('sent anyway')"},
       FALLBACK, "sent anyway", NULL, NULL, 0, "bot.lua:10: ctx.state has more than 128 keys"},
      {8, "a queue name the gateway refuses", {"local ctx = ... ctx:handoff('bad queue!')"},
       "probe:1: handoff needs a queue name"},
      {8, "reply text over 16 KiB names the bot's line",
       {"local ctx = ... ctx:reply(('x'):rep(20000))"}, "probe:1: reply text is longer than 16384"},
  };
  run_class(list, sizeof list / sizeof list[0]);
}

static void test_class9_quotes_urls(void **state) {
  (void)state;
  static const attack list[] = {
      {9, "quote of seq 1 with made-up text and sender",
       {"local ctx, msg = ... return ctx:reply('q', {quote = {seq = msg.seq, "
        "text = 'I never said that', sender = 'agent:boss'}})"},
       NULL, NULL, real_quote},
      {9, "quote of a seq the conversation never showed the bot",
       {"local ctx = ... return ctx:reply('q', {quote = {seq = 1000, text = 'forged', "
        "sender = 'agent:boss'}})"},
       "not one of the conversation's last", "forged"},
      {9, "URL with user info naming an allowed host",
       {"return http.get('http://allowed.example@127.0.0.2/')"}, "error:", NULL, no_http},
      {9, "URL with user info and password",
       {"return http.get('http://allowed.example:pw@127.0.0.2/')"}, "error:", NULL, no_http},
      {9, "an allowed IPv6 literal passes", {"return http.get('http://[::1]:1/')"}, NULL, NULL,
       one_http},
      {9, "a numeric-looking allow-list entry kept as written",
       {"return http.get('http://1e3/')"}, NULL, NULL, one_http},
  };
  run_class(list, sizeof list / sizeof list[0]);
}

static void test_summary(void **state) {
  (void)state;
  printf("    %d attacks, %d held\n", n_run, n_held);
  assert_int_equal(n_run, n_held);
}

static int setup(void **state) {
  (void)state;
  snprintf(g_dir, sizeof g_dir, "%s", fd_bot_dir(BOT));
  snprintf(g_dir_match, sizeof g_dir_match, "%s", fd_bot_dir(BOT_MATCH));
  return 0;
}

static int teardown(void **state) {
  (void)state;
  fd_rm_rf(g_dir);
  fd_rm_rf(g_dir_match);
  return 0;
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  /* Line-buffered: a child must not inherit and print the parent's lines. */
  setvbuf(stdout, NULL, _IOLBF, 0);
  /* SEC_CLASSES_FILTER=test_class6* runs a subset (cmocka's glob). */
  const char *filter = getenv("SEC_CLASSES_FILTER");
  if (filter && *filter) cmocka_set_test_filter(filter);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_class1_internals),   cmocka_unit_test(test_class2_runtime_calls),
      cmocka_unit_test(test_class3_library_tables), cmocka_unit_test(test_class4_c_functions),
      cmocka_unit_test(test_class5_budget),      cmocka_unit_test(test_class6_yield_across_c),
      cmocka_unit_test(test_class7_timers),      cmocka_unit_test(test_class8_limits),
      cmocka_unit_test(test_class9_quotes_urls), cmocka_unit_test(test_summary),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
