/* Typed settings: bot.yaml's `settings_schema` declares, per key of
 * `settings`, a type, whether it is required, a default, a pattern, a set
 * of allowed values and bounds. The schema and the settings (with the
 * environment's overrides applied) are checked when the bot loads, so by
 * `parley lint` and at start-up alike, and every error names the file and
 * line of the value at fault. The Lua side (lua/lib/settings.lua) fills in
 * defaults and converts values to the declared types. */
#include "settings.h"

#include <parley/error.h>

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <regex.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SCHEMA_KEYS_MAX 256

static const char *const ENTRY_KEYS[] = {"type",    "required", "default", "pattern", "enum",
                                         "min",     "max",      "description", NULL};
static const char *const TYPES[] = {"string", "integer", "number", "boolean", "list", "map", NULL};

static bool is_integer(const char *s) {
  if (!*s) return false;
  errno = 0;
  char *end = NULL;
  (void)strtoll(s, &end, 10);
  return errno == 0 && *end == '\0';
}

static bool to_number(const char *s, double *out) {
  if (!*s) return false;
  char *end = NULL;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || *end || !isfinite(v)) return false;
  *out = v;
  return true;
}

typedef struct entry {
  const pc_node *node;
  const char *name;
  const char *type;
  bool required;
  const pc_node *def, *pattern, *allowed, *min, *max;
} entry;

/* Checks one value against its entry. what names it in messages
 * ("settings.port", "settings_schema.port.default"). */
static int check_value(const entry *e, const pc_node *v, const char *what, char *err,
                       size_t errlen) {
  pc_kind k = pc_node_kind(v);
  const char *t = e->type;
  int sline = pc_node_line(e->node);
  if (!strcmp(t, "list") || !strcmp(t, "map")) {
    if (k != (!strcmp(t, "list") ? PC_SEQ : PC_MAP))
      return pc_fail_text(err, errlen, v, "", "%s: must be a %s (settings_schema line %d)", what, t,
                          sline);
    return 0;
  }
  if (k != PC_SCALAR)
    return pc_fail_text(err, errlen, v, "", "%s: must be a %s, not a %s (settings_schema line %d)",
                        what, t, k == PC_MAP ? "map" : "list", sline);
  const char *s = pc_scalar(v);
  double num = 0;
  if (!strcmp(t, "integer") && !is_integer(s))
    return pc_fail_text(err, errlen, v, "", "%s: '%s' is not an integer (settings_schema line %d)",
                        what, s, sline);
  if (!strcmp(t, "number") && !to_number(s, &num))
    return pc_fail_text(err, errlen, v, "", "%s: '%s' is not a number (settings_schema line %d)",
                        what, s, sline);
  if (!strcmp(t, "boolean") && strcmp(s, "true") && strcmp(s, "false"))
    return pc_fail_text(err, errlen, v, "",
                        "%s: '%s' is not true or false (settings_schema line %d)", what, s, sline);
  if (!strcmp(t, "integer")) to_number(s, &num);
  if (e->min || e->max) {
    double lo = 0, hi = 0;
    bool numeric = !strcmp(t, "integer") || !strcmp(t, "number");
    double x = numeric ? num : (double)strlen(s);
    const char *unit = numeric ? "" : " bytes long";
    if (e->min && to_number(pc_scalar(e->min), &lo) && x < lo)
      return pc_fail_text(err, errlen, v, "", "%s: must be at least %s%s (settings_schema line %d)",
                          what, pc_scalar(e->min), unit, sline);
    if (e->max && to_number(pc_scalar(e->max), &hi) && x > hi)
      return pc_fail_text(err, errlen, v, "", "%s: must be at most %s%s (settings_schema line %d)",
                          what, pc_scalar(e->max), unit, sline);
  }
  if (e->pattern) {
    regex_t re;
    if (regcomp(&re, pc_scalar(e->pattern), REG_EXTENDED | REG_NOSUB) == 0) {
      int m = regexec(&re, s, 0, NULL, 0);
      regfree(&re);
      if (m != 0)
        return pc_fail_text(err, errlen, v, "",
                            "%s: '%s' does not match the pattern '%s' (settings_schema line %d)",
                            what, s, pc_scalar(e->pattern), sline);
    }
  }
  if (e->allowed) {
    char list[256] = "";
    for (size_t i = 0; i < pc_len(e->allowed); i++) {
      const char *a = pc_scalar(pc_at(e->allowed, i));
      if (a && !strcmp(a, s)) return 0;
      size_t used = strlen(list);
      snprintf(list + used, sizeof list - used, "%s%s", i ? ", " : "", a ? a : "?");
    }
    return pc_fail_text(err, errlen, v, "", "%s: '%s' is not one of %s (settings_schema line %d)",
                        what, s, list, sline);
  }
  return 0;
}

/* Reads and checks one entry of the schema. */
static int read_entry(const pc_node *n, const char *name, entry *e, char *err, size_t errlen) {
  memset(e, 0, sizeof *e);
  e->node = n;
  e->name = name;
  if (pc_node_kind(n) != PC_MAP)
    return pc_fail_text(err, errlen, n, "", "settings_schema.%s: must be a map like {type: string}",
                        name);
  pc_error pe;
  if (pc_check_keys(n, ENTRY_KEYS, &pe)) {
    char buf[600];
    snprintf(err, errlen, "%s", pc_error_format(&pe, buf, sizeof buf));
    return PARLEY_ECONFIG;
  }
  const pc_node *t = pc_get(n, "type");
  if (!t || !pc_scalar(t))
    return pc_fail_text(err, errlen, n, "", "settings_schema.%s: needs a type (%s)", name,
                "string, integer, number, boolean, list or map");
  e->type = pc_scalar(t);
  bool known = false;
  for (const char *const *x = TYPES; *x; x++) known = known || !strcmp(*x, e->type);
  if (!known)
    return pc_fail_text(err, errlen, t, "", "settings_schema.%s.type: unknown type '%s' (%s)", name,
                        e->type, "string, integer, number, boolean, list or map");
  const pc_node *r = pc_get(n, "required");
  if (r) {
    const char *rs = pc_scalar(r);
    if (!rs || (strcmp(rs, "true") && strcmp(rs, "false")))
      return pc_fail_text(err, errlen, r, "", "settings_schema.%s.required: must be true or false",
                          name);
    e->required = !strcmp(rs, "true");
  }
  e->pattern = pc_get(n, "pattern");
  if (e->pattern) {
    regex_t re;
    if (!pc_scalar(e->pattern) || strcmp(e->type, "string"))
      return pc_fail_text(err, errlen, e->pattern, "",
                          "settings_schema.%s.pattern: a pattern is a string, for a string", name);
    int rc = regcomp(&re, pc_scalar(e->pattern), REG_EXTENDED | REG_NOSUB);
    if (rc) {
      char why[128];
      regerror(rc, &re, why, sizeof why);
      return pc_fail_text(err, errlen, e->pattern, "",
                          "settings_schema.%s.pattern: invalid regular expression: %s", name, why);
    }
    regfree(&re);
  }
  e->allowed = pc_get(n, "enum");
  if (e->allowed) {
    if (pc_node_kind(e->allowed) != PC_SEQ || pc_len(e->allowed) == 0)
      return pc_fail_text(err, errlen, e->allowed, "",
                          "settings_schema.%s.enum: must be a non-empty list", name);
    for (size_t i = 0; i < pc_len(e->allowed); i++)
      if (pc_node_kind(pc_at(e->allowed, i)) != PC_SCALAR)
        return pc_fail_text(err, errlen, pc_at(e->allowed, i), "",
                    "settings_schema.%s.enum: items must be scalars", name);
  }
  e->min = pc_get(n, "min");
  e->max = pc_get(n, "max");
  double d;
  if (e->min && (!pc_scalar(e->min) || !to_number(pc_scalar(e->min), &d)))
    return pc_fail_text(err, errlen, e->min, "", "settings_schema.%s.min: must be a number", name);
  if (e->max && (!pc_scalar(e->max) || !to_number(pc_scalar(e->max), &d)))
    return pc_fail_text(err, errlen, e->max, "", "settings_schema.%s.max: must be a number", name);
  e->def = pc_get(n, "default");
  if (e->def) {
    if (e->required)
      return pc_fail_text(err, errlen, e->def, "",
                          "settings_schema.%s: a required key has no default", name);
    char what[200];
    snprintf(what, sizeof what, "settings_schema.%s.default", name);
    int rc = check_value(e, e->def, what, err, errlen);
    if (rc) return rc;
  }
  return 0;
}

int plr_settings_check(const pc_node *root, char *err, size_t errlen) {
  const pc_node *schema = pc_get(root, "settings_schema");
  if (!schema) return 0;
  if (pc_node_kind(schema) != PC_MAP)
    return pc_fail_text(err, errlen, schema, "", "settings_schema: must be a map of setting names");
  size_t n = pc_len(schema);
  if (n > SCHEMA_KEYS_MAX)
    return pc_fail_text(err, errlen, schema, "", "settings_schema: more than %d keys",
                        SCHEMA_KEYS_MAX);
  const pc_node *settings = pc_get(root, "settings");
  if (settings && pc_node_kind(settings) != PC_MAP)
    return pc_fail_text(err, errlen, settings, "",
                        "settings: must be a map when settings_schema is given");
  /* Keys the schema does not declare are refused, with a suggestion, as
   * every other key of bot.yaml is: a typo must not pass silently. */
  const char *names[SCHEMA_KEYS_MAX + 1];
  for (size_t i = 0; i < n; i++) names[i] = pc_key_at(schema, i);
  names[n] = NULL;
  pc_error pe;
  if (settings && pc_check_keys(settings, names, &pe)) {
    char buf[600];
    snprintf(err, errlen, "%s (settings_schema does not declare it)",
             pc_error_format(&pe, buf, sizeof buf));
    return PARLEY_ECONFIG;
  }
  for (size_t i = 0; i < n; i++) {
    entry e;
    int rc = read_entry(pc_at(schema, i), names[i], &e, err, errlen);
    if (rc) return rc;
    const pc_node *v = settings ? pc_get(settings, names[i]) : NULL;
    if (v && pc_node_kind(v) == PC_SCALAR && !pc_scalar_quoted(v) &&
        (!strcmp(pc_scalar(v), "") || !strcmp(pc_scalar(v), "~") || !strcmp(pc_scalar(v), "null")))
      v = NULL;
    if (!v) {
      if (e.required) {
        char env[160];
        size_t j = 0;
        for (const char *c = names[i]; *c && j + 1 < sizeof env; c++)
          env[j++] = (char)toupper((unsigned char)*c);
        env[j] = '\0';
        return pc_fail_text(err, errlen, e.node, "",
                    "settings.%s: required by settings_schema but not set (in bot.yaml or "
                    "PARLEY_BOT_SETTINGS__%s)", names[i], env);
      }
      continue;
    }
    char what[200];
    snprintf(what, sizeof what, "settings.%s", names[i]);
    rc = check_value(&e, v, what, err, errlen);
    if (rc) return rc;
  }
  return 0;
}
