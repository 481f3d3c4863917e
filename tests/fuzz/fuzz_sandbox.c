/* Fuzz target: random Lua run as bot code against the sandbox
 * (lua/lib/runtime.lua, lua/src: vm.c, bounds.c, strmatch.c, bindings.c),
 * with small limits, on the recording fake driver (tests/lua).
 *
 * The input is Lua source (cut at its first NUL byte and at 64 KiB). For
 * each input a fresh runtime with a 4 MiB heap, 200,000 instructions and
 * cpu_time 250 ms is opened, and:
 *   1. conversation c-fuzz gets the input as a message; its handler loads
 *      and runs it as (ctx, msg), without a pcall: an error fails the
 *      handler, which is fine;
 *   2. conversation c-other gets "ping 1" and must answer "pong 1";
 *   3. pending HTTP requests are answered with an error, the loop runs a
 *      few passes with the clock moved on (timers the input armed fire);
 *   4. c-fuzz gets the input again (globals and kept ctx values of the
 *      first run are still there), then c-other gets "ping 2".
 * The checks: the runtime survives (no crash, no sanitizer report, no
 * abort: libFuzzer's -timeout catches a hang); c-other is answered both
 * times, in order; each step ends within a bound far above cpu_time (the
 * deadline holds in C functions too); the Lua heap stays near its cap;
 * every send is a reply within the documented limits (valid UTF-8, text at
 * most 16 KiB, at most 12 buttons, at most 100 replies and actions per
 * handler). */
#define _GNU_SOURCE
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <uv.h>

#include <parley/error.h>
#include <parley/types.h>

#include "../lua/fake_driver.h"
#include "fuzz_common.h"
#include "rt.h"

#define FS_INPUT_MAX (64 * 1024)
#define FS_MEMORY (4u << 20)
/* Wall time one step may take: cpu_time is 250 ms (a handler's time is
 * measured on the monotonic clock, so a much smaller one would fail the
 * ping handler whenever a loaded machine descheduled it); the rest is room
 * for a sanitizer build. A bounded C function overruns the deadline by well
 * under 10 ms. */
#define FS_STEP_MAX_S 3.0

static const char BOT_LUA[] =
    "local bot = parley.bot()\n"
    "bot:on_message(function(ctx, msg)\n"
    "  if msg.text:sub(1, 5) == 'ping ' then ctx:reply('pong ' .. msg.text:sub(6)) return end\n"
    "  local f = load(msg.text, '=fuzz')\n"
    "  if f then f(ctx, msg) end\n"
    "end)\n"
    "bot:on_agent_message(function(ctx, msg) end)\n"
    "bot:on_timer('t', function(ctx, data) local f = rawget(_G, 'T') if f then f(ctx, data) end end)\n"
    "return bot\n";

static const char *const BOT[] = {
    "bot.yaml",
    "name: fuzzsandbox\ndefault_locale: en\nfallback_reply: sorry\n"
    "limits:\n  memory: 4MiB\n  instructions: 200000\n  cpu_time: 250ms\n"
    "http:\n  allow: [127.0.0.1, example.com]\n",
    "templates/en.yaml", "sorry: \"Sorry.\"\ngreet: \"Hi {name}\"\n",
    "bot.lua", BOT_LUA, NULL};

static char g_dir[512];
static bool g_verbose;

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void cleanup(void) {
  if (g_dir[0]) fd_rm_rf(g_dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  g_verbose = getenv("FUZZ_SANDBOX_VERBOSE") != NULL;
  const char *dir = fd_bot_dir(BOT);
  FZ_CHECK(dir != NULL, "cannot write the bot folder");
  snprintf(g_dir, sizeof g_dir, "%s", dir);
  atexit(cleanup);
  return 0;
}

/* One step: an event, then the fake's pump; checks its wall time. */
static void step(fd *f, const char *conv, uint64_t seq, const char *text) {
  double t0 = now_s();
  fd_message(f, conv, seq, text);
  fd_pump(f);
  double took = now_s() - t0;
  FZ_CHECK(took < FS_STEP_MAX_S, "a step took %.3f s (cpu_time is 250 ms)", took);
}

static void check_sends(const fd *f, size_t from) {
  size_t per_conv = 0;
  for (size_t i = from; i < f->nsends; i++) {
    const fd_send *s = &f->sends[i];
    if (strcmp(s->conv, "c-fuzz") == 0) per_conv++;
    size_t n = strlen(s->text);
    /* fd_send keeps 4095 bytes: a longer text was cut by the fake, not sent
     * short; the length limit itself is checked by the runtime's tests. */
    FZ_CHECK(fz_utf8_ok(s->text, n) || n >= sizeof s->text - 8, "send %zu is not valid UTF-8", i);
    int buttons = 0;
    for (const char *b = s->buttons; *b; b++) buttons += *b == ';';
    FZ_CHECK(buttons <= 12, "send %zu has %d buttons", i, buttons);
  }
  FZ_CHECK(per_conv <= 2 * 101, "%zu sends from c-fuzz", per_conv);
}

static bool has_pong(const fd *f, size_t from, const char *want) {
  for (size_t i = from; i < f->nsends; i++)
    if (strcmp(f->sends[i].conv, "c-other") == 0 && strcmp(f->sends[i].text, want) == 0)
      return true;
  return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > FS_INPUT_MAX) size = FS_INPUT_MAX;
  char *text = malloc(size + 1);
  if (!text) return 0;
  memcpy(text, data, size);
  text[size] = '\0';
  fd *f = calloc(1, sizeof *f);
  if (!f) {
    free(text);
    return 0;
  }
  char err[1024] = "";
  FZ_CHECK(fd_open(f, g_dir, err, sizeof err) == 0, "runtime: %s", err);
  fd_assign(f, "c-fuzz", "en");
  fd_assign(f, "c-other", "en");
  step(f, "c-fuzz", 1, text);
  size_t mark = f->nsends;
  step(f, "c-other", 1, "ping 1");
  FZ_CHECK(has_pong(f, mark, "pong 1"), "c-other was not answered after the first run");
  /* HTTP the input started gets an error; timers it armed may fire. */
  for (size_t i = 0; i < f->nhttp; i++)
    if (!f->http[i].completed && !f->http[i].cancelled) fd_http_complete(f, i, 0, NULL);
  for (int pass = 0; pass < 3; pass++) {
    f->now += 60000;
    double t0 = now_s();
    uv_run(&f->loop, UV_RUN_NOWAIT);
    fd_pump(f);
    FZ_CHECK(now_s() - t0 < FS_STEP_MAX_S, "a loop pass took %.3f s", now_s() - t0);
  }
  step(f, "c-fuzz", 2, text);
  for (size_t i = 0; i < f->nhttp; i++)
    if (!f->http[i].completed && !f->http[i].cancelled) fd_http_complete(f, i, 0, NULL);
  fd_pump(f);
  mark = f->nsends;
  step(f, "c-other", 2, "ping 2");
  FZ_CHECK(has_pong(f, mark, "pong 2"), "c-other was not answered after the second run");
  check_sends(f, 0);
  size_t mem = plr_vm_memory(plr_runtime_vm(f->r));
  /* The cap holds for bot code; the runtime's own bookkeeping may add a
   * little on top of a full heap. */
  FZ_CHECK(mem <= FS_MEMORY + (1u << 20), "Lua heap at %zu bytes (cap %u)", mem, FS_MEMORY);
  plr_stats st;
  plr_runtime_stats(f->r, &st);
  if (g_verbose)
    fprintf(stderr, "sends %zu handled %llu failures %llu budget %llu mem %zu\n", f->nsends,
            (unsigned long long)st.handled, (unsigned long long)st.failures,
            (unsigned long long)st.budget_exceeded, mem);
  fd_close(f);
  free(f);
  free(text);
  return 0;
}
