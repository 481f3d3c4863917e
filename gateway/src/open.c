/* Proactive conversations: a bot opens a conversation with a customer
 * (Action.open, docs/protocol.md). This file holds the gateway's policy
 * (`proactive:` in its config: which bot principals may open conversations
 * with which customers), the check of an open Send, the customer's locale
 * when the bot gives none, and the hint that places the new conversation on
 * the connection that opened it. apply.c stages the events. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <parley/error.h>

#include "config/config.h"
#include "gw.h"

#define E(x) PARLEY__V1__ERROR_CODE__ERROR_##x
/* Rules and patterns per rule, at most: the policy is a short list of
 * bots, and a longer one is a mistake in the config more likely than not. */
#define PG_OPEN_MAX_RULES 1000
#define PG_OPEN_MAX_PATTERNS 10000

struct pg_open_rule {
  char *bot;
  char **customers; /* "name", "prefix*" or "*" */
  size_t n_customers;
};

static int fail(pc_error *err, const pc_node *n, const char *key, const char *msg) {
  err->line = pc_node_line(n);
  snprintf(err->key, sizeof err->key, "%s", key);
  snprintf(err->message, sizeof err->message, "%s", msg);
  return PARLEY_ECONFIG;
}

/* A pattern is a principal name, optionally ending in one '*' (a prefix);
 * "*" alone is every customer. */
static bool valid_pattern(const char *p) {
  size_t n = strlen(p);
  if (n == 0 || n > 128) return false;
  if (!strcmp(p, "*")) return true;
  char name[129];
  memcpy(name, p, n + 1);
  if (name[n - 1] == '*') name[--n] = '\0';
  return !strchr(name, '*') && pw_valid_conversation(name);
}

void pg_open_policy_free(pg_config *c) {
  for (size_t i = 0; i < c->n_open_rules; i++) {
    free(c->open_rules[i].bot);
    for (size_t j = 0; j < c->open_rules[i].n_customers; j++) free(c->open_rules[i].customers[j]);
    free(c->open_rules[i].customers);
  }
  free(c->open_rules);
  c->open_rules = NULL;
  c->n_open_rules = 0;
}

static int load_rule(pg_config *c, const pc_node *n, pg_open_rule *r, pc_error *err) {
  static const char *const keys[] = {"bot", "customers", NULL};
  int rc;
  if (pc_node_kind(n) != PC_MAP)
    return fail(err, n, "proactive", "each entry is a map {bot: NAME, customers: [...]}");
  if ((rc = pc_check_keys(n, keys, err))) return rc;
  const char *bot = NULL;
  if ((rc = pc_get_str(n, "bot", NULL, &bot, err))) return rc;
  if (!bot) return fail(err, n, "proactive.bot", "missing: the bot principal this rule allows");
  const pg_principal *p = pg_config_principal(c, bot);
  if (!p || p->role != PG_ROLE_BOT)
    return fail(err, pc_get(n, "bot"), "proactive.bot",
                "must name a principal listed under principals with role bot");
  if (!(r->bot = strdup(bot))) return PARLEY_ENOMEM;
  const pc_node *cs = pc_get(n, "customers");
  if (!cs || pc_node_kind(cs) != PC_SEQ || pc_len(cs) == 0)
    return fail(err, cs ? cs : n, "proactive.customers",
                "a non-empty list of customer names, \"prefix*\" patterns, or \"*\"");
  if (pc_len(cs) > PG_OPEN_MAX_PATTERNS)
    return fail(err, cs, "proactive.customers", "at most 10000 patterns per rule");
  if (!(r->customers = calloc(pc_len(cs), sizeof *r->customers))) return PARLEY_ENOMEM;
  for (size_t i = 0; i < pc_len(cs); i++) {
    const char *s = pc_scalar(pc_at(cs, i));
    if (!s || !valid_pattern(s))
      return fail(err, pc_at(cs, i), "proactive.customers",
                  "a customer name (1-128 bytes of [A-Za-z0-9._:@-]), optionally ending in *");
    if (!(r->customers[r->n_customers++] = strdup(s))) return PARLEY_ENOMEM;
  }
  return 0;
}

int pg_open_policy_load(pg_config *c, const pc_node *n, pc_error *err) {
  if (!n || pc_node_kind(n) == PC_NULL) return 0;
  if (pc_node_kind(n) != PC_SEQ)
    return fail(err, n, "proactive", "a list of {bot: NAME, customers: [...]} rules");
  if (pc_len(n) > PG_OPEN_MAX_RULES) return fail(err, n, "proactive", "at most 1000 rules");
  if (!(c->open_rules = calloc(pc_len(n) ? pc_len(n) : 1, sizeof *c->open_rules)))
    return PARLEY_ENOMEM;
  for (size_t i = 0; i < pc_len(n); i++) {
    int rc = load_rule(c, pc_at(n, i), &c->open_rules[c->n_open_rules++], err);
    if (rc) return rc;
  }
  return 0;
}

int pg_open_policy_dup(pg_config *dst, const pg_config *src) {
  dst->open_rules = NULL;
  dst->n_open_rules = 0;
  if (!src->n_open_rules) return 0;
  dst->open_rules = calloc(src->n_open_rules, sizeof *dst->open_rules);
  if (!dst->open_rules) return PARLEY_ENOMEM;
  for (size_t i = 0; i < src->n_open_rules; i++) {
    const pg_open_rule *s = &src->open_rules[i];
    pg_open_rule *d = &dst->open_rules[dst->n_open_rules++];
    if (!(d->bot = strdup(s->bot))) return PARLEY_ENOMEM;
    if (!(d->customers = calloc(s->n_customers, sizeof *d->customers))) return PARLEY_ENOMEM;
    for (size_t j = 0; j < s->n_customers; j++)
      if (!(d->customers[d->n_customers++] = strdup(s->customers[j]))) return PARLEY_ENOMEM;
  }
  return 0;
}

int pg_open_policy_allow_all(pg_config *c, const char *bot) {
  pg_open_rule *rules = realloc(c->open_rules, (c->n_open_rules + 1) * sizeof *rules);
  if (!rules) return PARLEY_ENOMEM;
  c->open_rules = rules;
  pg_open_rule *r = &rules[c->n_open_rules];
  memset(r, 0, sizeof *r);
  if (!(r->bot = strdup(bot)) || !(r->customers = calloc(1, sizeof *r->customers)) ||
      !(r->customers[0] = strdup("*"))) {
    free(r->bot);
    free(r->customers);
    return PARLEY_ENOMEM;
  }
  r->n_customers = 1;
  c->n_open_rules++;
  return 0;
}

static bool matches(const char *pattern, const char *name) {
  size_t n = strlen(pattern);
  if (n && pattern[n - 1] == '*') return !strncmp(pattern, name, n - 1);
  return !strcmp(pattern, name);
}

bool pg_open_allowed(const pg_config *c, const char *bot, const char *customer) {
  for (size_t i = 0; i < c->n_open_rules; i++) {
    const pg_open_rule *r = &c->open_rules[i];
    if (strcmp(r->bot, bot)) continue;
    for (size_t j = 0; j < r->n_customers; j++)
      if (matches(r->customers[j], customer)) return true;
  }
  return false;
}

/* ----------------------------------------------------------- an open Send */

static int refuse(pg_op *op, Parley__V1__ErrorCode code, const char *fmt, const char *a,
                  const char *b) {
  op->error = code;
  snprintf(op->msg, sizeof op->msg, fmt, a, b);
  return 1;
}

typedef struct latest {
  char locale[36];
} latest;

static int latest_locale(void *ud, const pg_store_conv *r) {
  latest *l = ud;
  /* Conversations come by id; any one with a locale tells which language
   * the customer chose, and later ones (by id) overwrite earlier ones. */
  if (r->locale && r->locale[0] && strlen(r->locale) < sizeof l->locale)
    snprintf(l->locale, sizeof l->locale, "%s", r->locale);
  return 0;
}

/* The customer's locale as the gateway knows it: a live connection's
 * Hello.locale, else the locale of one of their conversations, else none
 * (the bot's default then applies). */
static void customer_locale(pg_gateway *g, const char *customer, char *out, size_t n) {
  out[0] = '\0';
  for (pg_conn *c = pg_router_conns_of(g, customer); c; c = c->pnext)
    if (c->role == PG_ROLE_CUSTOMER && c->locale && c->locale[0]) {
      snprintf(out, n, "%s", c->locale);
      return;
    }
  latest l = {{0}};
  pg_store_conv_each(g->store, PG_STORE_BY_CUSTOMER, customer, latest_locale, &l);
  snprintf(out, n, "%s", l.locale);
}

int pg_open_check(pg_gateway *g, pg_op *op, const Parley__V1__Open *o, const pg_store_conv *existing,
                  char *locale, size_t locale_size) {
  if (op->role != PG_ROLE_BOT)
    return refuse(op, E(FORBIDDEN), "only bots open conversations with Action.open%s%s", "", "");
  if (existing) {
    if (strcmp(existing->bot, op->principal))
      return refuse(op, E(FORBIDDEN), "not your conversation%s%s", "", "");
    return refuse(op, E(INVALID), "conversation %.64s exists already: open needs a new id%s",
                  existing->id, "");
  }
  const char *customer = o->customer ? o->customer : "";
  if (!pw_valid_conversation(customer))
    return refuse(op, E(INVALID), "open.customer must be 1-128 bytes of [A-Za-z0-9._:@-]%s%s", "",
                  "");
  const pg_principal *p = pg_config_principal(g->cfg, customer);
  if (p && p->role != PG_ROLE_CUSTOMER)
    return refuse(op, E(INVALID), "open.customer %.64s is not a customer%s", customer, "");
  if (!pg_open_allowed(g->cfg, op->principal, customer))
    return refuse(op, E(FORBIDDEN),
                  "the gateway's proactive policy does not let %.40s open conversations with "
                  "%.40s",
                  op->principal, customer);
  if (o->locale && strlen(o->locale) >= locale_size)
    return refuse(op, E(INVALID), "open.locale is longer than 35 bytes%s%s", "", "");
  if (o->locale && o->locale[0]) snprintf(locale, locale_size, "%s", o->locale);
  else customer_locale(g, customer, locale, locale_size);
  return 0;
}

/* ------------------------------------------------------------- placement */

pg_conn *pg_open_placement(pg_gateway *g, pg_conv *cv) {
  uint64_t id = cv->opener;
  cv->opener = 0;
  if (!id) return NULL;
  /* The connection that opened it is waiting for it (to send the first
   * message with the new epoch), so it gets it when it is still there. */
  for (pg_conn *c = pg_router_conns_of(g, cv->pub.bot); c; c = c->pnext)
    if (c->id == id && c->state == PG_CS_OPEN && c->wsi && c->role == PG_ROLE_BOT) return c;
  return NULL;
}
