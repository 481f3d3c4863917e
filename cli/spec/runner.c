/* `parley test <botdir>`: runs a bot's spec files as scripted conversations
 * over the real protocol, in one process on one libuv loop: the embedded
 * gateway, the bot runtime and one customer client per case. Everything
 * the checks look at comes from the wire: the replies and conversation
 * events the customer receives, and the state the bot commits.
 *
 * With --faults every case runs again while the bot runtime is killed at
 * seeded random moments (freed and created again on the same gateway, so
 * uncommitted events are redelivered and handlers run again) and the
 * customer's connection is dropped and opened again; the customer must
 * still see each reply exactly once and in order. wb.h lists the parts.
 */
#include "wb.h"
#include "../cli.h"

#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "../cli.h"


void wb_note(wb *w, const char *fmt, ...) {
  size_t n = strlen(w->notes);
  if (n + 2 >= sizeof w->notes) return;
  if (n) w->notes[n++] = ';', w->notes[n++] = ' ', w->notes[n] = 0;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(w->notes + n, sizeof w->notes - n, fmt, ap);
  va_end(ap);
}

/* The fault schedule's generator (util/rand.h): reproducible from --seed. */
uint64_t wb_rnd(wb *w) { return pu_rng_next(&w->rng); }


/* ------------------------------------------------------------ the loop */

static void on_tick(uv_timer_t *t) { (void)t; }

typedef bool (*wb_cond)(wb *w);

bool wb_pump_until(wb *w, wb_cond cond, uint32_t timeout_ms) {
  uint64_t deadline = uv_now(w->loop) + timeout_ms;
  while (!cond(w)) {
    if (uv_now(w->loop) > deadline) return false;
    uv_run(w->loop, UV_RUN_ONCE);
  }
  return true;
}

bool wb_cond_cust_ready(wb *w) {
  return w->cust && parley_client_state(w->cust) == PARLEY_CONN_READY;
}

static bool cond_never(wb *w) {
  (void)w;
  return false;
}

/* Lets a freed client's transport finish closing (see WB_FREE_QUIET_MS). */
void wb_quiet_after_free(wb *w) { wb_pump_until(w, cond_never, WB_FREE_QUIET_MS); }

bool wb_cond_no_kill(wb *w) { return !w->kill_armed && !w->rebirth_armed && w->bot; }

static bool cond_bot_ready(wb *w) {
  return !w->bot || parley_client_state(parley_runtime_client(w->bot->rt)) == PARLEY_CONN_READY;
}

static bool cond_agents_ready(wb *w) {
  for (size_t i = 0; i < w->n_agents; i++)
    if (parley_client_state(w->agents[i].client) != PARLEY_CONN_READY) return false;
  return true;
}

/* The bot is done with what the step caused: nothing in flight on either
 * side, the bot committed every event it must handle, and the customer saw
 * every reply the gateway stored. Checked a few ticks in a row because a
 * reply may still be on the wire. */
static int settle_rounds;
static bool settled_once(wb *w) {
  if (!w->bot || !w->bot->rt) return false;
  /* Timers due on the simulated clock fire now rather than on the real one. */
  plr_rt_fire_due(w->bot->rt);
  /* A customer that is reconnecting has not been told everything yet. */
  if (!w->cust || parley_client_state(w->cust) != PARLEY_CONN_READY) return false;
  bool ok = w->cust_pending == 0 && w->bot_pending == 0 && !parley_runtime_busy(w->bot->rt) &&
            w->cust_seen >= w->bot_max_acked && w->cust_seen >= w->cust_last_seq;
  uint64_t need = w->need_seq;
  if (w->gate) {
    /* Settled when the bot is done with everything before the opening
     * message, which it has not been given yet. */
    if (!w->n_held) return false;
    need = w->held[0]->ev.seq - 1;
  }
  if (ok && w->with_bot) ok = parley_runtime_committed(w->bot->rt, w->conv) >= need;
  /* Every event the gateway stored, including what the bot's commit
   * produced (tags, state changes), reached the customer: a push dropped by
   * the fault switches comes back by redelivery. */
  if (ok && w->gw && w->conv[0]) ok = w->cust_seen >= pg_gateway_last_seq(w->gw, w->conv);
  /* After a handoff the bot still commits the handler that handed off
   * (its state and tags come with that commit). A runtime that never held
   * the conversation (a new one after a kill) cannot: the commit then
   * comes with the hand back, when the event is handled again. */
  if (ok && !w->with_bot && w->bot_has_conv)
    ok = parley_runtime_committed(w->bot->rt, w->conv) >= w->handoff_need;
  return ok;
}

static bool cond_settled(wb *w) {
  if (settled_once(w)) {
    if (++settle_rounds >= WB_SETTLE_ROUNDS) return true;
  } else {
    settle_rounds = 0;
  }
  /* Let a tick pass between checks. */
  uv_run(w->loop, UV_RUN_ONCE);
  return false;
}

void wb_cut_fire(uv_timer_t *t) {
  wb *w = t->data;
  w->cut_armed = false;
  px_cut_all(&w->proxy);
}

/* ------------------------------------------------------------ the checks */

/* Splits "\n"-joined tags into the pieces of buf. */
static size_t split_tags(const char *joined, char *buf, size_t size, const char **out, size_t max) {
  size_t n = 0;
  if (!joined || !*joined) return 0;
  snprintf(buf, size, "%s", joined);
  for (char *p = buf; p && *p && n < max;) {
    out[n++] = p;
    p = strchr(p, '\n');
    if (p) *p++ = '\0';
  }
  return n;
}

/* Hands what the customer saw during the step, the committed state and the
 * tags to the runtime's spec interpreter. */
static void judge(wb *w, const plr_spec_step *step, const wb_item *const *shown, size_t n_shown,
                  bool commit_lost, char *why, size_t whylen) {
  static plr_spec_item views[WB_ITEMS_MAX];
  static const plr_spec_item *items[WB_ITEMS_MAX];
  for (size_t i = 0; i < n_shown; i++) {
    const wb_item *it = shown[i];
    views[i] = (plr_spec_item){.seq = it->seq, .kind = it->kind, .from_bot = it->from_bot,
                               .ctype = it->ctype, .sender = it->sender ? it->sender : "",
                               .text = it->text ? it->text : "", .title = it->title ? it->title : "",
                               .labels = it->labels ? it->labels : "", .quote_seq = it->quote_seq,
                               .quote_excerpt = it->quote_excerpt ? it->quote_excerpt : "",
                               .queue = it->queue ? it->queue : "", .note = it->note ? it->note : ""};
    items[i] = &views[i];
  }
  char tbuf[4096], bbuf[4096];
  const char *tags[128], *before[128];
  plr_spec_view v = {.items = items, .n_items = n_shown,
                     .state_keys = (const char *const *)w->state_keys,
                     .state_vals = (const char *const *)w->state_vals, .n_state = w->n_state,
                     .tags = tags, .n_tags = split_tags(w->cur_tags, tbuf, sizeof tbuf, tags, 128),
                     .tags_before = before,
                     .n_tags_before = split_tags(w->step_start_tags, bbuf, sizeof bbuf, before, 128),
                     .commit_unknown = commit_lost};
  plr_spec_check(step->expect, &v, why, whylen);
}

/* -------------------------------------------------------------- one case */

typedef struct case_result {
  bool failed, skipped;
  char why[1200];
} case_result;

static void reset_case(wb *w) {
  for (size_t i = 0; i < w->n_items; i++) {
    wb_item *it = &w->items[i];
    free(it->sender), free(it->text), free(it->title), free(it->image), free(it->labels);
    free(it->quote_excerpt), free(it->queue), free(it->note), free(it->assignee), free(it->tags);
    free(it->locale);
  }
  w->n_items = 0;
  wb_state_clear(w);
  free(w->cur_tags), free(w->step_start_tags);
  w->cur_tags = w->step_start_tags = NULL;
  w->cust_pending = w->cust_failures = 0;
  w->cust_last_seq = w->cust_seen = w->need_seq = 0;
  w->bot_pending = 0;
  w->bot_max_acked = 0;
  w->last_taker[0] = 0;
  w->handoff_need = 0;
  w->bot_has_conv = false;
  w->notes[0] = 0;
  w->dup_reply = false;
  w->with_bot = true;
}

bool wb_cond_cust_answered(wb *w) { return w->cust_pending == 0; }

static void run_case(wb *w, const char *file, const pc_node *c, int index, FILE *out,
                     case_result *res) {
  memset(res, 0, sizeof *res);
  reset_case(w);
  const char *name = pc_scalar(pc_get(c, "name"));
  char fallback_name[32];
  if (!name) snprintf(fallback_name, sizeof fallback_name, "case %d", index + 1), name = fallback_name;
  const char *locale = pc_scalar(pc_get(c, "locale"));
  snprintf(w->locale, sizeof w->locale, "%s", locale ? locale : w->default_locale);
  w->stubs = pc_get(c, "http");
  uint8_t id[PARLEY_MSG_ID_LEN];
  char hex[33];
  parley_msg_id_random(id);
  parley_msg_id_hex(id, hex);
  snprintf(w->conv, sizeof w->conv, "spec-%d-%.12s", index + 1, hex);

  wb_lines exp = {0}, act = {0};
  /* The conversation so far, printed when the case fails. */
  char *trace_buf = NULL;
  size_t trace_len = 0;
  FILE *trace = open_memstream(&trace_buf, &trace_len);
  const pc_node *steps = pc_get(c, "steps");
  if (wb_cust_new(w) != 0 || !wb_pump_until(w, wb_cond_cust_ready, 5000)) {
    snprintf(res->why, sizeof res->why, "the customer could not connect");
    res->failed = true;
    goto report;
  }
  for (size_t si = 0; si < pc_len(steps) && !res->failed && !res->skipped; si++) {
    const pc_node *st = pc_at(steps, si);
    w->step = (int)si;
    w->notes[0] = 0;
    free(w->step_start_tags);
    w->step_start_tags = w->cur_tags ? wb_xdup(w->cur_tags) : NULL;
    plr_stats before = {0};
    if (w->bot && w->bot->rt) plr_runtime_stats(w->bot->rt, &before);
    uint64_t kills_before = w->kills;
    size_t first_item = w->n_items;
    bool open_step = pc_get(st, "open") != NULL;
    char why[1024] = "";
    bool skip = false;
    plr_spec_step step;
    if (!plr_spec_step_parse(st, &step, why, sizeof why)) {
      res->failed = true;
      snprintf(res->why, sizeof res->why, "step %zu (line %d): %s", si + 1, pc_node_line(st), why);
      break;
    }
    w->gate = open_step;
    if (!wb_step_start(w, &step, &skip, why, sizeof why)) {
      w->gate = false;
      res->failed = !skip;
      res->skipped = skip;
      snprintf(res->why, sizeof res->why, "step %zu (line %d): %s", si + 1, pc_node_line(st), why);
      break;
    }
    if (w->faults) {
      /* Kill the bot at a random moment of about half the steps, and
       * sometimes drop the customer's connection once its send is stored. */
      if (wb_rnd(w) % 2 == 0 && !w->kill_armed) {
        w->kill_armed = true;
        uv_timer_start(&w->kill_timer, wb_kill_fire, wb_rnd(w) % 40, 0);
      }
      if (w->proxy_on && wb_rnd(w) % 2 == 0 && !w->cut_armed) {
        w->cut_armed = true;
        uv_timer_start(&w->cut_timer, wb_cut_fire, wb_rnd(w) % 60, 0);
      }
      if (wb_rnd(w) % 3 == 0 && wb_pump_until(w, wb_cond_cust_answered, 5000) &&
          wb_pump_until(w, wb_cond_cust_ready, 5000) && wb_pump_until(w, wb_cond_no_kill, 5000)) {
        parley_client_free(w->cust);
        w->cust = NULL;
        w->reconnects++;
        wb_quiet_after_free(w);
        if (wb_cust_new(w) != 0) wb_note(w, "the customer could not connect again");
      }
    }
    settle_rounds = 0;
    if (!wb_pump_until(w, cond_settled, WB_STEP_TIMEOUT_MS)) {
      snprintf(why, sizeof why, "the bot did not settle within %d ms (committed #%llu of #%llu)",
               WB_STEP_TIMEOUT_MS,
               (unsigned long long)(w->bot ? parley_runtime_committed(w->bot->rt, w->conv) : 0),
               (unsigned long long)w->need_seq);
    }
    /* What this step caused. The open step leaves out the answer to its
     * opening message; other steps see everything that arrived. */
    const wb_item *shown[WB_ITEMS_MAX];
    size_t n_shown = 0;
    uint64_t open_msg_seq = w->cust_last_seq;
    for (size_t i = first_item; i < w->n_items; i++) {
      wb_item *it = &w->items[i];
      if (open_step && it->from_bot && it->has_id) {
        uint64_t in = wb_inbound_of(w, it->id);
        if (in && in >= open_msg_seq) continue;
      }
      if (open_step && it->seq == open_msg_seq) continue;
      shown[n_shown++] = it;
    }
    plr_stats after = {0};
    if (w->bot && w->bot->rt) plr_runtime_stats(w->bot->rt, &after);
    if (!why[0] && w->kills == kills_before && after.failures > before.failures &&
        !step.handler_fails)
      snprintf(why, sizeof why, "a handler failed (see the log with -v)");
    /* A kill between a handoff and its commit leaves the state, the tags
     * and the timers to the hand back; what the customer saw must hold. */
    bool commit_lost = w->kills > kills_before && !w->with_bot && !w->bot_has_conv &&
                       w->handoff_need;
    if (!why[0]) judge(w, &step, shown, n_shown, commit_lost, why, sizeof why);
    if (!why[0] && w->dup_reply) snprintf(why, sizeof why, "%s", w->notes);
    if (!why[0] && w->cust_failures) snprintf(why, sizeof why, "%s", w->notes);
    if (why[0]) {
      if (w->notes[0] && strcmp(why, w->notes))
        snprintf(why + strlen(why), sizeof why - strlen(why), " (%s)", w->notes);
      res->failed = true;
      snprintf(res->why, sizeof res->why, "step %zu (line %d): %s", si + 1, pc_node_line(st), why);
    }
    /* The step in the side-by-side view: the spec on the left, what the
     * customer got on the right; the failing one with the state. */
    char title[600];
    wb_step_title(st, title, sizeof title);
    wb_add_line(&exp, "%s%s", why[0] ? ">> " : "", title);
    wb_add_line(&act, "%s%s", why[0] ? ">> " : "", title);
    for (size_t k = 0; k < pc_len(step.expect); k++) {
      const pc_node *e = pc_at(step.expect, k);
      for (size_t j = 0; j < pc_len(e); j++) {
        char f[1500] = "";
        plr_spec_flow(pc_at(e, j), f, sizeof f);
        wb_add_line(&exp, "  %s: %s", pc_key_at(e, j), f);
      }
    }
    for (size_t i = 0; i < n_shown; i++) wb_render_item(&act, shown[i]);
    if (!n_shown) wb_add_line(&act, "(nothing)");
    if (why[0]) {
      char st_line[1500] = "state: {";
      for (size_t i = 0; i < w->n_state; i++) {
        if (!strcmp(w->state_keys[i], "_timers")) continue;
        size_t len = strlen(st_line);
        snprintf(st_line + len, sizeof st_line - len, "%s%s: %s", st_line[8] ? ", " : "",
                 w->state_keys[i], w->state_vals[i]);
      }
      strncat(st_line, "}", sizeof st_line - strlen(st_line) - 1);
      wb_add_line(&act, "%s", st_line);
      if (w->cur_tags) {
        char t[1024];
        snprintf(t, sizeof t, "%s", w->cur_tags);
        for (char *p = t; *p; p++)
          if (*p == '\n') *p = ',';
        wb_add_line(&act, "tags: [%s]", t);
      }
    }
    if (trace) wb_side_by_side_rows(trace, &exp, &act);
    wb_free_lines(&exp);
    wb_free_lines(&act);
    if (w->gate) {
      /* The open step is judged; now the bot gets the opening message. */
      w->gate = false;
      for (size_t i = 0; i < w->n_held; i++)
        if (w->bot && w->bot->rt) plr_rt_on_event(w->bot->rt, &w->held[i]->ev);
      wb_held_drop_all(w);
      settle_rounds = 0;
      if (!wb_pump_until(w, cond_settled, WB_STEP_TIMEOUT_MS) && !res->failed) {
        res->failed = true;
        snprintf(res->why, sizeof res->why,
                 "step %zu (line %d): the bot did not settle after the opening message", si + 1,
                 pc_node_line(st));
      }
    }
  }
  w->gate = false;
  wb_held_drop_all(w);
report:
  if (w->kill_armed) {
    uv_timer_stop(&w->kill_timer);
    w->kill_armed = false;
  }
  if (w->cut_armed) {
    uv_timer_stop(&w->cut_timer);
    w->cut_armed = false;
  }
  if (w->cust) {
    wb_pump_until(w, wb_cond_cust_ready, 3000); /* see wb_kill_fire */
    wb_pump_until(w, wb_cond_no_kill, 3000);
    parley_client_free(w->cust);
    w->cust = NULL;
    wb_quiet_after_free(w);
  }
  if (res->skipped) {
    fprintf(out, "SKIP %s:%d: %s: %s\n", file, pc_node_line(c), name, res->why);
  } else if (res->failed) {
    fprintf(out, "FAIL %s:%d: %s%s: %s\n", file, pc_node_line(c), name,
            w->faults ? " [faults]" : "", res->why);
    if (trace) {
      fflush(trace);
      if (trace_len) {
        wb_side_by_side_header(out);
        fwrite(trace_buf, 1, trace_len, out);
      }
    }
  } else {
    fprintf(out, "PASS %s: %s%s\n", file, name, w->faults ? " [faults]" : "");
  }
  fflush(out);
  if (trace) fclose(trace);
  free(trace_buf);
  wb_free_lines(&exp);
  wb_free_lines(&act);
}

/* ------------------------------------------------------------ the setup */

static void add_agent_name(wb *w, const char *name) {
  if (!name || !name[0] || w->n_agents >= WB_AGENTS_MAX) return;
  for (size_t i = 0; i < w->n_agents; i++)
    if (!strcmp(w->agents[i].name, name)) return;
  snprintf(w->agents[w->n_agents++].name, sizeof w->agents[0].name, "%s", name);
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static void on_closed_noop(uv_handle_t *h) { (void)h; }

/* --help prints the usage on stdout and succeeds; a usage error prints it
 * on stderr and exits 2. */
static int usage_to(FILE *out) {
  fprintf(out,
          "usage: parley test <botdir> [options] [spec files...]\n"
          "  --faults           run every case again with the bot killed and the customer\n"
          "                     reconnected at random moments\n"
          "  --cut              with --faults, also cut the bot's and the customer's\n"
          "                     connections at random moments (experimental)\n"
          "  --seed N           seed of the fault schedule (default 1)\n"
          "  -v, --verbose      show the bot's log\n"
          "  --watch            run again whenever a file of the bot changes (Ctrl-C stops)\n"
          "  --runs N           with --watch, stop after N runs\n"
          "Runs bots' spec/*.yaml (or the files given) against the bot over the embedded\n"
          "gateway; prints PASS/FAIL per case and \"N passed, N failed\".\n");
  return out == stdout ? 0 : 2;
}

static int usage(void) { return usage_to(stderr); }

/* bot.yaml's name (the bot's principal) and default locale. */
static void bot_identity(const char *dir, char *out, size_t size, char *locale, size_t lsize) {
  char path[1200];
  snprintf(path, sizeof path, "%s/bot.yaml", dir);
  pc_doc *doc = NULL;
  pc_error err;
  const char *name = NULL, *loc = NULL;
  if (pc_load_file(path, &doc, &err) == 0) {
    pc_get_str(pc_root(doc), "name", NULL, &name, &err);
    pc_get_str(pc_root(doc), "default_locale", NULL, &loc, &err);
  }
  snprintf(out, size, "%s", name && name[0] ? name : "bot");
  snprintf(locale, lsize, "%s", loc && loc[0] ? loc : "en");
  pc_doc_free(doc);
}

/* Takes --watch and --runs N out of argv (they concern the watch loop, not
 * one run); returns whether --watch was given. */
static bool take_watch(int *argc, char **argv, long *max_runs) {
  bool watch = false;
  int out = 0;
  for (int i = 0; i < *argc; i++) {
    if (!strcmp(argv[i], "--watch")) {
      watch = true;
    } else if (!strcmp(argv[i], "--runs") && i + 1 < *argc) {
      *max_runs = strtol(argv[++i], NULL, 10);
    } else {
      argv[out++] = argv[i];
    }
  }
  *argc = out;
  argv[out] = NULL;
  return watch;
}

int cli_test(int argc, char **argv) {
  long max_runs = 0;
  if (take_watch(&argc, argv, &max_runs)) {
    /* The bot folder: the first argument that is not an option or an
     * option's value. */
    const char *dir = NULL;
    for (int i = 1; i < argc && !dir; i++) {
      if (!strcmp(argv[i], "--seed")) i++;
      else if (argv[i][0] != '-') dir = argv[i];
    }
    if (!dir) return usage();
    return cli_test_watch(argc, argv, dir, max_runs);
  }
  static const struct option opts[] = {{"faults", no_argument, 0, 'f'},
                                       {"cut", no_argument, 0, 'c'},
                                       {"seed", required_argument, 0, 's'},
                                       {"verbose", no_argument, 0, 'v'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  bool faults = false, verbose = false, cut = false;
  uint64_t seed = 1;
  optind = 1;
  int ch;
  while ((ch = getopt_long(argc, argv, "fcs:vh", opts, NULL)) != -1) {
    switch (ch) {
    case 'f': faults = true; break;
    case 'c': cut = faults = true; break;
    case 's': seed = strtoull(optarg, NULL, 10); break;
    case 'v': verbose = true; break;
    case 'h': return usage_to(stdout);
    default: return usage();
    }
  }
  if (optind >= argc) return usage();
  const char *bot_dir = argv[optind++];

  char err[4096];
  if (parley_runtime_check(bot_dir, err, sizeof err) != 0) {
    fprintf(stderr, "parley test: cannot load bot %s:\n%s\n", bot_dir, err);
    return 1;
  }

  /* The spec files: those given, or the .yaml files of the bot's spec folder, sorted. */
  char *files[WB_FILES_MAX];
  size_t n_files = 0;
  if (optind < argc) {
    for (int i = optind; i < argc && n_files < WB_FILES_MAX; i++) files[n_files++] = wb_xdup(argv[i]);
  } else {
    char sdir[1100];
    snprintf(sdir, sizeof sdir, "%s/spec", bot_dir);
    DIR *d = opendir(sdir);
    if (!d) {
      fprintf(stderr, "parley test: %s: %s\n", sdir, strerror(errno));
      return 1;
    }
    struct dirent *de;
    while ((de = readdir(d)) && n_files < WB_FILES_MAX) {
      size_t n = strlen(de->d_name);
      if (n > 5 && !strcmp(de->d_name + n - 5, ".yaml")) {
        char p[1400];
        snprintf(p, sizeof p, "%s/%s", sdir, de->d_name);
        files[n_files++] = wb_xdup(p);
      }
    }
    closedir(d);
    qsort(files, n_files, sizeof files[0], cmp_str);
  }
  pc_doc *docs[WB_FILES_MAX] = {0};
  int rc = 0;
  for (size_t i = 0; i < n_files; i++) {
    pc_error pe;
    if (pc_load_file(files[i], &docs[i], &pe) != 0) {
      fprintf(stderr, "parley test: %s\n", pc_error_format(&pe, err, sizeof err));
      rc = 1;
    } else if (plr_spec_validate(pc_root(docs[i]), err, sizeof err) != 0) {
      /* A misspelt key would otherwise run a different test than written. */
      fprintf(stderr, "parley test: %s\n", err);
      rc = 1;
    }
  }
  if (n_files == 0) {
    fprintf(stderr, "parley test: no spec files in %s/spec\n", bot_dir);
    rc = 1;
  }
  static wb runner;
  wb *w = &runner;
  memset(w, 0, sizeof *w);
  if (rc) goto out_files;

  w->verbose = verbose;
  pu_rng_seed(&w->rng, seed);
  snprintf(w->bot_dir, sizeof w->bot_dir, "%s", bot_dir);
  bot_identity(bot_dir, w->principal, sizeof w->principal, w->default_locale,
               sizeof w->default_locale);
  add_agent_name(w, PLR_SPEC_AGENT);
  for (size_t i = 0; i < n_files; i++) {
    const pc_node *cases = pc_root(docs[i]);
    for (size_t c = 0; c < pc_len(cases); c++) {
      const pc_node *steps = pc_get(pc_at(cases, c), "steps");
      for (size_t s = 0; s < pc_len(steps); s++)
        add_agent_name(w, pc_scalar(pc_find(pc_at(steps, s), "event.assignee"))),
        add_agent_name(w, pc_scalar(pc_find(pc_at(steps, s), "agent.as")));
    }
  }

  /* The embedded gateway: a fresh data directory and one token for all. */
  if (sodium_init() < 0) {
    rc = 1;
    goto out_files;
  }
  wb_derive_owner = w;
  w->loop = uv_default_loop();
  uint8_t tid[PARLEY_MSG_ID_LEN];
  parley_msg_id_random(tid);
  parley_msg_id_hex(tid, w->token);
  const char *tmp = getenv("TMPDIR");
  snprintf(w->data_dir, sizeof w->data_dir, "%s/parley-test-XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp(w->data_dir)) {
    fprintf(stderr, "parley test: cannot create a data directory: %s\n", strerror(errno));
    rc = 1;
    goto out_files;
  }
  /* One token for all; the bot, the customer and every agent the spec
   * names are principals. */
  pg_embedded_principal ps[2 + WB_AGENTS_MAX];
  size_t np = 0;
  ps[np++] = (pg_embedded_principal){.name = w->principal, .role = PARLEY_ROLE_BOT,
                                     .token = w->token};
  ps[np++] = (pg_embedded_principal){.name = "customer", .role = PARLEY_ROLE_CUSTOMER,
                                     .token = w->token};
  for (size_t i = 0; i < w->n_agents; i++)
    ps[np++] = (pg_embedded_principal){.name = w->agents[i].name, .role = PARLEY_ROLE_AGENT,
                                       .token = w->token};
  /* --faults: the gateway's test switches drop, double and reorder pushes
   * and send ACKs during the second pass (turned on there). */
  pg_embedded_faults fl = {.drop_push = 5, .duplicate_push = 5, .reorder_push = 10,
                           .drop_ack = 5, .duplicate_ack = 5, .seed = seed ? seed : 1};
  pg_embedded_config ec = {.data_dir = w->data_dir,
                           .bot = w->principal,
                           .principals = ps,
                           .n_principals = np,
                           /* A killed bot's connection may die without a close;
                            * short heartbeats let the gateway reassign within a
                            * second. */
                           .heartbeat_ms = 500,
                           .ack_timeout_ms = 1000,
                           .faults = faults ? &fl : NULL,
                           /* The bot under test may open conversations with
                            * any customer, as a production gateway's policy
                            * would let it. */
                           .bot_opens_any = true};
  if (pg_config_embedded(&ec, &w->gw_cfg, err, sizeof err) != 0) {
    fprintf(stderr, "parley test: embedded gateway config: %s\n", err);
    rc = 1;
    goto out_dir;
  }
  if ((rc = pg_gateway_new(w->loop, w->gw_cfg, &w->gw)) != 0) {
    fprintf(stderr, "parley test: cannot start the embedded gateway: %s\n", parley_strerror(rc));
    rc = 1;
    goto out_dir;
  }
  pg_gateway_set_faults(w->gw, false);
  snprintf(w->url, sizeof w->url, "ws://127.0.0.1:%d/", pg_gateway_port(w->gw));
  uv_timer_init(w->loop, &w->tick);
  uv_timer_start(&w->tick, on_tick, WB_TICK_MS, WB_TICK_MS);
  uv_timer_init(w->loop, &w->kill_timer);
  w->kill_timer.data = w;
  uv_timer_init(w->loop, &w->cut_timer);
  w->cut_timer.data = w;
  uv_timer_init(w->loop, &w->rebirth_timer);
  w->rebirth_timer.data = w;
  if (cut) {
    if (px_start(&w->proxy, w->loop, pg_gateway_port(w->gw)) != 0) {
      fprintf(stderr, "parley test: cannot start the fault layer\n");
      rc = 1;
      goto out_stop;
    }
    w->proxy_on = true;
    snprintf(w->proxy_url, sizeof w->proxy_url, "ws://127.0.0.1:%d/", w->proxy.port);
  }
  w->clock_base = pu_wall_ms();

  for (size_t i = 0; i < w->n_agents; i++) {
    parley_client_options co = PARLEY_CLIENT_OPTIONS_INIT;
    co.url = w->url;
    co.principal = w->agents[i].name;
    co.token = w->token;
    co.role = PARLEY_ROLE_AGENT;
    co.loop = w->loop;
    co.cb.on_send_result = wb_agent_on_send_result;
    co.user_data = w;
    if (parley_client_new(&co, &w->agents[i].client) == 0)
      parley_client_start(w->agents[i].client);
  }
  if (wb_bot_new(w, err, sizeof err) != 0) {
    fprintf(stderr, "parley test: %s\n", err);
    rc = 1;
    goto out_stop;
  }
  if (!wb_pump_until(w, cond_agents_ready, 5000)) {
    fprintf(stderr, "parley test: the spec agents could not connect\n");
    rc = 1;
    goto out_stop;
  }

  unsigned passed = 0, failed = 0, skipped = 0;
  for (int round = 0; round < (faults ? 2 : 1); round++) {
    w->faults = round == 1;
    pg_gateway_set_faults(w->gw, w->faults);
    if (w->faults) {
      printf("-- faults (seed %llu)\n", (unsigned long long)seed);
      /* With --cut the bot comes back through the fault layer. */
      if (w->proxy_on) {
        wb_bot_kill(w);
        wb_pump_until(w, wb_cond_no_kill, 5000);
        w->kills = 0;
      }
    }
    for (size_t i = 0; i < n_files; i++) {
      const pc_node *cases = pc_root(docs[i]);
      for (size_t c = 0; c < pc_len(cases); c++) {
        case_result cr;
        run_case(w, files[i], pc_at(cases, c), (int)(round * 1000 + c + i * 100), stdout, &cr);
        if (cr.skipped) skipped++;
        else if (cr.failed) failed++;
        else passed++;
      }
    }
    if (w->faults) {
      uint64_t dropped, doubled, reordered;
      pg_gateway_fault_counts(w->gw, &dropped, &doubled, &reordered);
      printf("-- faults: %u bot kills, %u customer reconnects, %u connections cut; "
             "%llu frames dropped, %llu doubled, %llu reordered\n",
             w->kills, w->reconnects, w->proxy.cuts, (unsigned long long)dropped,
             (unsigned long long)doubled, (unsigned long long)reordered);
    }
  }
  if (skipped) printf("%u skipped (not possible over the gateway)\n", skipped);
  printf("%u passed, %u failed\n", passed, failed);
  fflush(stdout);
  rc = failed ? 1 : 0;

out_stop:
  reset_case(w);
  wb_pump_until(w, wb_cond_no_kill, 3000);
  if (w->bot) {
    wb_pump_until(w, cond_bot_ready, 3000); /* see wb_kill_fire */
  }
  wb_bot_free(w);
  for (size_t i = 0; i < w->n_agents; i++) parley_client_free(w->agents[i].client);
  uv_timer_stop(&w->kill_timer);
  uv_close((uv_handle_t *)&w->kill_timer, on_closed_noop);
  uv_timer_stop(&w->cut_timer);
  uv_close((uv_handle_t *)&w->cut_timer, on_closed_noop);
  uv_timer_stop(&w->rebirth_timer);
  uv_close((uv_handle_t *)&w->rebirth_timer, on_closed_noop);
  if (w->proxy_on) px_stop(&w->proxy, on_closed_noop);
  if (w->gw) pg_gateway_stop(w->gw, NULL, NULL);
  uv_timer_stop(&w->tick);
  uv_close((uv_handle_t *)&w->tick, on_closed_noop);
  for (int i = 0; i < 1000 && uv_run(w->loop, UV_RUN_NOWAIT); i++) {
    struct timespec ts = {0, 2 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  if (w->gw) pg_gateway_free(w->gw);
  uv_loop_close(w->loop);
out_dir:
  if (w->gw_cfg) pg_config_free(w->gw_cfg);
  pg_data_dir_remove(w->data_dir);
out_files:
  wb_derive_owner = NULL;
  for (size_t i = 0; i < n_files; i++) {
    pc_doc_free(docs[i]);
    free(files[i]);
  }
  return rc;
}

