/* Fuzz target: the conversion of a bot's reply into a parley_content
 * (ctx:reply in lua/lib/runtime.lua: normalize_content, fallback_text,
 * quote_of; C.send in lua/src/bindings.c).
 *
 * One runtime is opened on the first run, on a driver of this file (no
 * network), with a bot whose on_message handler decodes the message text as
 * JSON and passes it to ctx:reply, both inside pcall. The input is the
 * message text, cut at its first NUL byte and at 64 KiB:
 *
 *   {"r": <reply>, "o": <options>}   reply and options
 *   anything else that decodes       the reply itself, without options
 *
 * JSON reaches every shape the conversion has to handle: nested tables,
 * strings with any bytes (invalid UTF-8 by raw bytes, NULs by \u0000, long
 * strings), numbers, booleans and null. An option "quote": "msg" is replaced
 * by the incoming message, as a bot writes {quote = msg}.
 *
 * A malformed reply must be refused (an error in Lua or a send refused);
 * every send that reaches the driver must be a well-formed parley_content:
 * a known kind, a fallback that is valid UTF-8 of bounded length (4096
 * bytes when generated, as docs/protocol.md says; NULL or empty lets the
 * engine render one), at most 12 buttons each with a label and exactly
 * one of payload or url on cards (a payload on quick replies), every string
 * NUL-terminated valid UTF-8 within the reply limits; a quote has a
 * positive seq and valid UTF-8 excerpt and sender. */
#define _GNU_SOURCE /* fopencookie, memmem */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>

#include <uv.h>

#include <parley/error.h>
#include <parley/types.h>

#include "../lua/fake_driver.h"
#include "fuzz_common.h"
#include "rt.h"

/* The limits of lua/lib/runtime.lua (TEXT_MAX, BUTTONS_MAX, EXCERPT_MAX). */
#define FR_TEXT_MAX (16 * 1024)
#define FR_BUTTONS_MAX 12
#define FR_EXCERPT_MAX 280
/* An explicit fallback is bounded by the text limit, a generated one by
 * docs/protocol.md ("at most 4096 bytes, cut at a character boundary"). */
#define FR_FALLBACK_MAX FR_TEXT_MAX
#define FR_GENERATED_FALLBACK_MAX 4096
#define FR_INPUT_MAX (64 * 1024)
#define FR_PENDING_MAX 64
#define CONV "c-fuzz"

static const char BOT_LUA[] =
    "local bot = parley.bot()\n"
    "bot:on_message(function(ctx, msg)\n"
    "  local ok, v = pcall(json.decode, msg.text)\n"
    "  if not ok or v == nil then return end\n"
    "  local reply, opts = v, nil\n"
    "  if type(v) == 'table' and v.r ~= nil then reply, opts = v.r, v.o end\n"
    "  if type(opts) == 'table' and opts.quote == 'msg' then opts.quote = msg end\n"
    "  if type(opts) == 'table' and opts.fallback ~= nil or type(reply) == 'table' and reply.fallback ~= nil then\n"
    "    ctx:log('warn', 'explicit fallback')\n"
    "  end\n"
    "  local sent, e = pcall(ctx.reply, ctx, reply, opts)\n"
    "  if not sent then ctx:log('warn', 'refused: ' .. tostring(e)) end\n"
    "end)\n"
    "return bot\n";

static const char *const BOT[] = {"bot.yaml", "name: fuzzreply\ndefault_locale: en\n",
                                  "templates/en.yaml", "hello: \"Hello\"\n",
                                  "bot.lua", BOT_LUA, NULL};

typedef struct fr {
  parley_runtime *r;
  uv_loop_t loop;
  void *pending[FR_PENDING_MAX]; /* send_ud of sends not yet answered */
  uint8_t pending_id[FR_PENDING_MAX][PARLEY_MSG_ID_LEN];
  size_t npending;
  parley_commit_result commits[FR_PENDING_MAX];
  size_t ncommits;
  uint64_t seq;
  size_t sends; /* sends accepted since the start */
  char dir[512];
  FILE *log;
  bool explicit_fallback; /* the current reply names a fallback of its own */
  bool verbose; /* FUZZ_REPLY_VERBOSE set: log lines and a count to stderr */
} fr;

static fr g;

/* Coverage of the Lua side. The Lua interpreter and runtime.lua are not
 * instrumented, so libFuzzer alone would see only the C code; these extra
 * counters (a libFuzzer feature on Linux) add one feature per distinct
 * refusal message (digits left out, so that seqs and indexes do not make
 * every run new) and per shape of accepted content. */
#define FR_COUNTERS 4096
__attribute__((used, section("__libfuzzer_extra_counters"))) static uint8_t
    fr_counters[FR_COUNTERS];

static void fr_feature(uint32_t h) {
  uint8_t *c = &fr_counters[h % FR_COUNTERS];
  if (*c < 255) (*c)++;
}

static uint32_t fr_hash(uint32_t h, const char *p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (p[i] >= '0' && p[i] <= '9') continue;
    h = (h ^ (uint8_t)p[i]) * 16777619u;
  }
  return h;
}

/* The runtime's log stream: each "refused" line becomes a feature. */
static ssize_t fr_log_write(void *cookie, const char *buf, size_t n) {
  (void)cookie;
  if (g.verbose) fprintf(stderr, "%.*s", (int)n, buf);
  if (memmem(buf, n, "explicit fallback", 17)) g.explicit_fallback = true;
  const char *r = memmem(buf, n, "refused: ", 9);
  if (r) fr_feature(fr_hash(2166136261u, r, n - (size_t)(r - buf)));
  return (ssize_t)n;
}

/* Checks an optional string: NULL, or valid UTF-8 of at most max bytes.
 * Returns its length (0 for NULL). */
static size_t check_str(const char *s, size_t max, const char *what) {
  if (!s) return 0;
  size_t n = strnlen(s, max + 1);
  FZ_CHECK(n <= max, "%s longer than %zu bytes", what, max);
  FZ_CHECK(fz_utf8_ok(s, n), "%s is not valid UTF-8", what);
  return n;
}

static int fr_send(void *ud, const char *conv, const parley_content *c, const parley_quote *q,
                   const uint8_t id[PARLEY_MSG_ID_LEN], uint64_t epoch, void *send_ud) {
  fr *f = ud;
  FZ_CHECK(conv && strcmp(conv, CONV) == 0, "send to conversation '%s'", conv ? conv : "(null)");
  FZ_CHECK(epoch == 1, "send with epoch %llu", (unsigned long long)epoch);
  FZ_CHECK(c->kind == PARLEY_CONTENT_TEXT || c->kind == PARLEY_CONTENT_CARD ||
               c->kind == PARLEY_CONTENT_QUICK_REPLIES || c->kind == PARLEY_CONTENT_IMAGE,
           "send of content kind %d", (int)c->kind);
  size_t text = check_str(c->text, FR_TEXT_MAX, "text");
  check_str(c->title, FR_TEXT_MAX, "title");
  size_t image = check_str(c->image_url, FR_TEXT_MAX, "image_url");
  size_t fb = f->explicit_fallback || c->kind == PARLEY_CONTENT_TEXT
                  ? check_str(c->fallback, FR_FALLBACK_MAX, "fallback")
                  : check_str(c->fallback, FR_GENERATED_FALLBACK_MAX, "generated fallback");
  FZ_CHECK(c->payload == NULL && c->label == NULL, "reply with postback fields");
  FZ_CHECK(c->n_buttons <= FR_BUTTONS_MAX, "%zu buttons", c->n_buttons);
  FZ_CHECK(c->n_buttons == 0 || c->buttons != NULL, "%zu buttons without an array",
           c->n_buttons);
  for (size_t i = 0; i < c->n_buttons; i++) {
    const parley_button *b = &c->buttons[i];
    FZ_CHECK(b->label != NULL, "button %zu without a label", i);
    check_str(b->label, FR_TEXT_MAX, "button label");
    check_str(b->payload, FR_TEXT_MAX, "button payload");
    check_str(b->url, FR_TEXT_MAX, "button url");
    if (c->kind == PARLEY_CONTENT_CARD)
      FZ_CHECK((b->payload == NULL) != (b->url == NULL),
               "card button %zu needs exactly one of payload or url", i);
    else
      FZ_CHECK(b->payload != NULL && b->url == NULL, "quick reply %zu without a payload", i);
  }
  switch (c->kind) {
    case PARLEY_CONTENT_TEXT:
      FZ_CHECK(c->text != NULL, "text reply without a text");
      FZ_CHECK(c->n_buttons == 0, "text reply with buttons");
      break;
    case PARLEY_CONTENT_CARD:
      break;
    case PARLEY_CONTENT_QUICK_REPLIES:
      FZ_CHECK(c->text != NULL, "quick replies without a prompt");
      FZ_CHECK(c->n_buttons >= 1, "quick replies without options");
      break;
    case PARLEY_CONTENT_IMAGE:
      FZ_CHECK(c->image_url != NULL, "image without a url");
      FZ_CHECK(c->n_buttons == 0, "image with buttons");
      break;
    default:
      break;
  }
  /* An empty fallback is allowed: the engine (pe_content_to_wire in
   * sdk/src/core/convert.c) renders one for a NULL or empty fallback, so
   * only its content is checked above. */
  (void)text, (void)image, (void)fb;
  if (q) {
    FZ_CHECK(q->seq >= 1, "quote with seq 0");
    check_str(q->excerpt, FR_EXCERPT_MAX, "quote excerpt");
    check_str(q->sender, FR_TEXT_MAX, "quote sender");
  }
  uint32_t shape = 0x9e3779b9u * ((uint32_t)c->kind + 1);
  shape ^= (uint32_t)c->n_buttons << 4 ^ (q ? 1u << 9 : 0) ^ (c->fallback ? 1u << 10 : 0);
  for (size_t len = fb; len; len >>= 1) shape += 1u << 11;
  for (size_t len = text; len; len >>= 1) shape += 1u << 16;
  fr_feature(shape * 2654435761u);
  if (f->npending >= FR_PENDING_MAX) return PARLEY_EBACKPRESSURE;
  f->pending[f->npending] = send_ud;
  memcpy(f->pending_id[f->npending], id, PARLEY_MSG_ID_LEN);
  f->npending++;
  f->sends++;
  return 0;
}

static int fr_action(void *ud, const char *conv, const parley_action *a,
                     const uint8_t id[PARLEY_MSG_ID_LEN], uint64_t epoch, void *send_ud) {
  (void)ud, (void)conv, (void)a, (void)id, (void)epoch, (void)send_ud;
  FZ_CHECK(false, "the bot made an action");
  return PARLEY_EINVAL;
}

static int fr_commit(void *ud, const parley_commit *cs, size_t n) {
  fr *f = ud;
  for (size_t i = 0; i < n; i++) {
    if (f->ncommits >= FR_PENDING_MAX) return PARLEY_EBACKPRESSURE;
    f->commits[f->ncommits++] =
        (parley_commit_result){.conversation = CONV, .ack_seq = cs[i].ack_seq};
  }
  return 0;
}

static int fr_http(void *ud, const plr_http_req *req, plr_http_done done, void *cb_ud,
                   void **handle) {
  (void)ud, (void)req, (void)done, (void)cb_ud, (void)handle;
  return PARLEY_EINVAL;
}

static void fr_http_cancel(void *ud, void *handle) { (void)ud, (void)handle; }

static int64_t fr_now(void *ud) {
  (void)ud;
  return 1700000000000;
}

/* Answers sends (accepted) and commits until nothing moves, as the client
 * layer would; bounded so that a runtime that keeps sending is a hang the
 * fuzzer reports rather than an endless loop. */
static void fr_pump(fr *f) {
  for (int round = 0; round < 1000; round++) {
    bool moved = false;
    while (f->npending > 0) {
      size_t i = --f->npending;
      parley_send_result res = {.conversation = CONV, .status = 0, .seq = 1000 + f->sends};
      memcpy(res.msg_id, f->pending_id[i], PARLEY_MSG_ID_LEN);
      plr_rt_on_send_result(f->r, &res, f->pending[i]);
      moved = true;
    }
    while (f->ncommits > 0) {
      parley_commit_result res = f->commits[--f->ncommits];
      plr_rt_on_commit_result(f->r, &res);
      moved = true;
    }
    uv_run(&f->loop, UV_RUN_NOWAIT);
    if (f->npending || f->ncommits) moved = true;
    if (!moved) return;
  }
  FZ_CHECK(false, "the runtime did not settle after 1000 rounds");
}

static void fr_cleanup(void) {
  if (g.verbose) fprintf(stderr, "fuzz_reply: %zu sends accepted\n", g.sends);
  if (g.r) {
    parley_runtime_free(g.r);
    g.r = NULL;
    uv_run(&g.loop, UV_RUN_DEFAULT);
    uv_loop_close(&g.loop);
  }
  if (g.log) fclose(g.log);
  if (g.dir[0]) fd_rm_rf(g.dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  g.verbose = getenv("FUZZ_REPLY_VERBOSE") != NULL;
  const char *dir = fd_bot_dir(BOT);
  FZ_CHECK(dir != NULL, "cannot write the bot folder");
  snprintf(g.dir, sizeof g.dir, "%s", dir);
  FZ_CHECK(uv_loop_init(&g.loop) == 0, "uv_loop_init failed");
  /* Refusals are expected on most inputs: their log lines only feed
   * fr_counters. */
  g.log = fopencookie(NULL, "w", (cookie_io_functions_t){.write = fr_log_write});
  FZ_CHECK(g.log != NULL, "fopencookie failed");
  setvbuf(g.log, NULL, _IOLBF, 0);
  parley_runtime_options o = {.loop = &g.loop, .bot_dir = g.dir, .log_out = g.log, .log_level = PARLEY_LOG_WARN};
  plr_driver d = {.send = fr_send,
                  .action = fr_action,
                  .commit = fr_commit,
                  .http = fr_http,
                  .http_cancel = fr_http_cancel,
                  .now_ms = fr_now,
                  .ud = &g};
  char err[1024] = "";
  int rc = plr_runtime_new_driver(&o, &d, &g.r, err, sizeof err);
  FZ_CHECK(rc == 0, "runtime: %d %s", rc, err);
  atexit(fr_cleanup);
  parley_assignment a = {.conversation = CONV, .epoch = 1, .locale = "en", .customer = "cust"};
  plr_rt_on_assign(g.r, &a);
  fr_pump(&g);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static char text[FR_INPUT_MAX + 1];
  if (size > FR_INPUT_MAX) size = FR_INPUT_MAX;
  memcpy(text, data, size);
  text[size] = '\0';
  g.explicit_fallback = false;
  parley_event ev = {.kind = PARLEY_EVENT_MESSAGE,
                     .conversation = CONV,
                     .seq = ++g.seq,
                     .sender = "cust",
                     .sender_role = PARLEY_ROLE_CUSTOMER,
                     .content = {.kind = PARLEY_CONTENT_TEXT, .text = text}};
  plr_rt_on_event(g.r, &ev);
  fr_pump(&g);
  return 0;
}
