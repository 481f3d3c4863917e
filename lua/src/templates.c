/* Templates: templates/<locale>.yaml of a bot, checked at load, and the two
 * ICU services ctx:t needs: the locale fallback chain and plural categories.
 *
 * A template file is a map. A string value is a template; a map whose keys
 * are CLDR plural categories (zero, one, two, few, many, other) is a plural
 * template selected by the `count` var; any other map is a namespace whose
 * keys join with a dot ("order.not_found"). Placeholders are {name}.
 *
 * Checks, each reported as "file:line: key: message": malformed YAML, a
 * plural map without "other" or with an unknown category, a key of another
 * locale missing in the default locale, and a placeholder used by another
 * locale that the default locale's template for the key does not use.
 */
#include "rt.h"

#include "config/config.h"
#include "util/array.h"

#include <lauxlib.h>
#include <unicode/uenum.h>
#include <unicode/uloc.h>
#include <unicode/upluralrules.h>
#include <unicode/ustring.h>

#include <ctype.h>
#include <dirent.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define TPL_MAX_LOCALES 64
#define TPL_MAX_KEYS 10000
#define TPL_MAX_TEXT (16 * 1024)
#define TPL_MAX_DEPTH 8
#define TPL_LOCALE_MAX 64

static const char *const CATEGORIES[] = {"zero", "one", "two", "few", "many", "other", NULL};

static bool is_category(const char *k) {
  for (const char *const *c = CATEGORIES; *c; c++)
    if (strcmp(*c, k) == 0) return true;
  return false;
}

/* Lower case, '_' to '-': the one spelling used for table keys and chains. */
static void norm_locale(const char *in, char *out, size_t size) {
  size_t i = 0;
  for (; in[i] && i + 1 < size; i++)
    out[i] = in[i] == '_' ? '-' : (char)tolower((unsigned char)in[i]);
  out[i] = '\0';
}

typedef struct tpl_entry {
  char *key;
  int line;
  char *vars; /* "\0"-separated placeholder names, "" when none */
  size_t vars_len;
} tpl_entry;

typedef struct tpl_file {
  char locale[TPL_LOCALE_MAX];
  char path[1024];
  tpl_entry *e;
  size_t n, cap;
} tpl_file;

typedef struct tpl_load {
  const char *dir;
  const char *default_locale;
  tpl_file files[TPL_MAX_LOCALES];
  size_t nfiles;
  char *err;
  size_t errlen, errused;
  int nerr;
  int status;
  /* Warnings (lint): what loads but is likely a mistake. */
  char *warn;
  size_t warnlen, warnused;
  int nwarn;
} tpl_load;

static void tpl_warn(tpl_load *t, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
static void tpl_warn(tpl_load *t, const char *fmt, ...) {
  t->nwarn++;
  if (!t->warn || t->warnused + 2 >= t->warnlen) return;
  if (t->warnused) t->warn[t->warnused++] = '\n';
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(t->warn + t->warnused, t->warnlen - t->warnused, fmt, ap);
  va_end(ap);
  if (n > 0) t->warnused += (size_t)n;
  if (t->warnused >= t->warnlen) t->warnused = t->warnlen - 1;
}

/* Does the locale's plural rule ever select cat? "zero" in English does
 * not: a form written for it is never shown. */
static bool category_selected(const char *locale, const char *cat) {
  char icu[TPL_LOCALE_MAX];
  size_t i = 0;
  for (; locale[i] && i + 1 < sizeof icu; i++) icu[i] = locale[i] == '-' ? '_' : locale[i];
  icu[i] = '\0';
  UErrorCode st = U_ZERO_ERROR;
  UPluralRules *pr = uplrules_open(icu, &st);
  if (U_FAILURE(st) || !pr) return true; /* cannot tell: no warning */
  UEnumeration *kw = uplrules_getKeywords(pr, &st);
  bool found = U_FAILURE(st) || !kw;
  const char *k;
  int32_t len;
  while (!found && (k = uenum_next(kw, &len, &st)) != NULL && U_SUCCESS(st))
    found = strcmp(k, cat) == 0;
  if (kw) uenum_close(kw);
  uplrules_close(pr);
  return found;
}

static void tpl_err(tpl_load *t, const char *fmt, ...) {
  t->nerr++;
  t->status = PARLEY_ECONFIG;
  if (!t->err || t->errused + 2 >= t->errlen) return;
  if (t->errused) t->err[t->errused++] = '\n';
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(t->err + t->errused, t->errlen - t->errused, fmt, ap);
  va_end(ap);
  if (n > 0) t->errused += (size_t)n;
  if (t->errused >= t->errlen) t->errused = t->errlen - 1;
}

/* Appends the placeholders of text to *vars (deduplicated). */
static int collect_vars(const char *text, char **vars, size_t *len) {
  for (const char *p = text; (p = strchr(p, '{')); p++) {
    const char *q = p + 1;
    if (!(isalpha((unsigned char)*q) || *q == '_')) continue;
    while (isalnum((unsigned char)*q) || *q == '_') q++;
    if (*q != '}') continue;
    size_t n = (size_t)(q - p - 1);
    bool seen = false;
    for (size_t off = 0; off < *len; off += strlen(*vars + off) + 1)
      if (strlen(*vars + off) == n && memcmp(*vars + off, p + 1, n) == 0) seen = true;
    if (seen) continue;
    char *nv = realloc(*vars, *len + n + 1);
    if (!nv) return PARLEY_ENOMEM;
    memcpy(nv + *len, p + 1, n);
    nv[*len + n] = '\0';
    *vars = nv;
    *len += n + 1;
  }
  return 0;
}

static bool has_var(const tpl_entry *e, const char *name) {
  for (size_t off = 0; off < e->vars_len; off += strlen(e->vars + off) + 1)
    if (strcmp(e->vars + off, name) == 0) return true;
  return false;
}

static tpl_entry *add_entry(tpl_load *t, tpl_file *f, const char *key, int line) {
  if (f->n >= TPL_MAX_KEYS) {
    tpl_err(t, "%s:%d: %s: more than %d template keys", f->path, line, key, TPL_MAX_KEYS);
    return NULL;
  }
  if (pu_reserve(&f->e, &f->cap, f->n, sizeof *f->e, 32)) return NULL;
  tpl_entry *e = &f->e[f->n];
  memset(e, 0, sizeof *e);
  e->key = strdup(key);
  if (!e->key) return NULL;
  e->line = line;
  f->n++;
  return e;
}

static bool check_text(tpl_load *t, tpl_file *f, const pc_node *n, const char *key) {
  const char *s = pc_scalar(n);
  if (!s) {
    tpl_err(t, "%s:%d: %s: a template must be a string", f->path, pc_node_line(n), key);
    return false;
  }
  if (strlen(s) > TPL_MAX_TEXT) {
    tpl_err(t, "%s:%d: %s: longer than %d bytes", f->path, pc_node_line(n), key, TPL_MAX_TEXT);
    return false;
  }
  return true;
}

/* Walks one map level; the table for the locale is on top of the stack. */
static void walk(lua_State *L, tpl_load *t, tpl_file *f, const pc_node *map,
                 const char *prefix, int depth) {
  if (depth > TPL_MAX_DEPTH) {
    tpl_err(t, "%s:%d: %s: nested too deeply", f->path, pc_node_line(map), prefix);
    return;
  }
  size_t n = pc_len(map);
  for (size_t i = 0; i < n; i++) {
    const char *k = pc_key_at(map, i);
    const pc_node *v = pc_at(map, i);
    char key[512];
    snprintf(key, sizeof key, "%s%s%s", prefix, *prefix ? "." : "", k ? k : "");
    int line = pc_node_line(v);
    pc_kind kind = pc_node_kind(v);
    if (kind == PC_SCALAR) {
      if (!check_text(t, f, v, key)) continue;
      tpl_entry *e = add_entry(t, f, key, line);
      if (!e || collect_vars(pc_scalar(v), &e->vars, &e->vars_len)) {
        t->status = t->status ? t->status : PARLEY_ENOMEM;
        return;
      }
      lua_pushstring(L, pc_scalar(v));
      lua_setfield(L, -2, key);
    } else if (kind == PC_MAP) {
      bool plural = false;
      for (size_t j = 0; j < pc_len(v); j++)
        if (pc_key_at(v, j) && is_category(pc_key_at(v, j))) plural = true;
      if (!plural) {
        walk(L, t, f, v, key, depth + 1);
        continue;
      }
      tpl_entry *e = add_entry(t, f, key, line);
      if (!e) {
        t->status = t->status ? t->status : PARLEY_ENOMEM;
        return;
      }
      bool ok = true;
      lua_createtable(L, 0, 6);
      for (size_t j = 0; j < pc_len(v); j++) {
        const char *cat = pc_key_at(v, j);
        const pc_node *form = pc_at(v, j);
        if (!cat || !is_category(cat)) {
          tpl_err(t, "%s:%d: %s: unknown plural category '%s' (zero, one, two, few, many, other)",
                  f->path, pc_node_line(form), key, cat ? cat : "");
          ok = false;
          continue;
        }
        if (!check_text(t, f, form, key)) {
          ok = false;
          continue;
        }
        if (!category_selected(f->locale, cat))
          tpl_warn(t, "%s:%d: %s: plural category '%s' is never selected in %s; this form is "
                      "never shown",
                   f->path, pc_node_line(form), key, cat, f->locale);
        if (collect_vars(pc_scalar(form), &e->vars, &e->vars_len)) {
          t->status = PARLEY_ENOMEM;
          lua_pop(L, 1);
          return;
        }
        lua_pushstring(L, pc_scalar(form));
        lua_setfield(L, -2, cat);
      }
      if (!pc_get(v, "other")) {
        tpl_err(t, "%s:%d: %s: plural template has no 'other' form", f->path, line, key);
        ok = false;
      }
      if (ok) lua_setfield(L, -2, key);
      else lua_pop(L, 1);
    } else if (kind == PC_SEQ) {
      tpl_err(t, "%s:%d: %s: a template must be a string or a map", f->path, line, key);
    }
  }
}

static bool has_yaml_ext(const char *name, size_t *stem) {
  size_t n = strlen(name);
  if (n > 5 && strcmp(name + n - 5, ".yaml") == 0) {
    *stem = n - 5;
    return true;
  }
  if (n > 4 && strcmp(name + n - 4, ".yml") == 0) {
    *stem = n - 4;
    return true;
  }
  return false;
}

static bool valid_locale(const char *s) {
  if (!*s) return false;
  for (; *s; s++)
    if (!isalnum((unsigned char)*s) && *s != '-' && *s != '_') return false;
  return true;
}

/* A file name that is a locale in form but names no language ICU knows
 * (jp.yaml, meant as ja.yaml) is never chosen for a customer. */
static void known_language(tpl_load *t, const tpl_file *f) {
  static const char *const common[][2] = {{"jp", "ja"}, {"cn", "zh"}, {"kr", "ko"},
                                          {"gr", "el"}, {"cz", "cs"}, {"dk", "da"},
                                          {"se", "sv"}, {"ua", "uk"}, {"vn", "vi"},
                                          {"il", "he"}, {NULL, NULL}};
  char lang[TPL_LOCALE_MAX];
  size_t i = 0;
  for (; f->locale[i] && f->locale[i] != '-' && i + 1 < sizeof lang; i++) lang[i] = f->locale[i];
  lang[i] = '\0';
  const char *iso3 = uloc_getISO3Language(lang);
  if (iso3 && *iso3) return;
  const char *hint = NULL;
  for (size_t k = 0; common[k][0]; k++)
    if (!strcmp(common[k][0], lang)) hint = common[k][1];
  tpl_warn(t, "%s:1: file name: '%s' is not a language code, so no customer's locale selects "
              "this file%s%s%s",
           f->path, lang, hint ? " (did you mean " : "", hint ? hint : "", hint ? ".yaml?)" : "");
}

static void load_file(lua_State *L, tpl_load *t, const char *name, size_t stem) {
  if (t->nfiles >= TPL_MAX_LOCALES) {
    tpl_err(t, "%s/templates: more than %d locales", t->dir, TPL_MAX_LOCALES);
    return;
  }
  tpl_file *f = &t->files[t->nfiles];
  memset(f, 0, sizeof *f);
  snprintf(f->path, sizeof f->path, "%s/templates/%s", t->dir, name);
  char raw[TPL_LOCALE_MAX];
  if (stem >= sizeof raw) stem = sizeof raw - 1;
  memcpy(raw, name, stem);
  raw[stem] = '\0';
  if (!valid_locale(raw)) {
    tpl_err(t, "%s:1: file name: not a locale (like en, zh-Hans, pt_BR)", f->path);
    return;
  }
  norm_locale(raw, f->locale, sizeof f->locale);
  known_language(t, f);
  for (size_t i = 0; i < t->nfiles; i++)
    if (strcmp(t->files[i].locale, f->locale) == 0) {
      tpl_err(t, "%s:1: file name: locale %s has two files", f->path, f->locale);
      return;
    }
  t->nfiles++;
  pc_doc *doc = NULL;
  pc_error pe;
  memset(&pe, 0, sizeof pe);
  if (pc_load_file(f->path, &doc, &pe)) {
    char buf[768];
    tpl_err(t, "%s", pc_error_format(&pe, buf, sizeof buf));
    return;
  }
  const pc_node *root = pc_root(doc);
  lua_createtable(L, 0, 32);
  if (pc_node_kind(root) == PC_MAP) {
    walk(L, t, f, root, "", 0);
  } else if (pc_node_kind(root) != PC_NULL) {
    tpl_err(t, "%s:%d: : a template file must be a map of keys to templates", f->path,
            pc_node_line(root));
  }
  lua_setfield(L, -2, f->locale);
  pc_doc_free(doc);
}

static void cross_check(tpl_load *t) {
  char def[TPL_LOCALE_MAX];
  norm_locale(t->default_locale, def, sizeof def);
  const tpl_file *d = NULL;
  for (size_t i = 0; i < t->nfiles; i++)
    if (strcmp(t->files[i].locale, def) == 0) d = &t->files[i];
  /* bot.yaml's lines, for the errors that are about its keys. */
  char cfg_path[1024];
  snprintf(cfg_path, sizeof cfg_path, "%s/bot.yaml", t->dir);
  pc_doc *cfg = NULL;
  pc_error pe;
  if (pc_load_file(cfg_path, &cfg, &pe) != 0) cfg = NULL;
  const pc_node *root = cfg ? pc_root(cfg) : NULL;
  if (!d) {
    if (t->nfiles) {
      const pc_node *dl = pc_get(root, "default_locale");
      char found[512] = "";
      for (size_t i = 0; i < t->nfiles; i++) {
        size_t len = strlen(found);
        snprintf(found + len, sizeof found - len, "%s%s.yaml", i ? ", " : "", t->files[i].locale);
      }
      tpl_err(t, "%s:%d: default_locale: no template file templates/%s.yaml for the default "
                 "locale %s (found %s)",
              cfg_path, dl ? pc_node_line(dl) : 1, t->default_locale, t->default_locale, found);
    }
    pc_doc_free(cfg);
    return;
  }
  /* fallback_reply names a template key of the default locale. */
  const pc_node *fr = pc_get(root, "fallback_reply");
  if (pc_scalar(fr)) {
    bool have = false;
    for (size_t k = 0; k < d->n && !have; k++) have = strcmp(d->e[k].key, pc_scalar(fr)) == 0;
    if (!have)
      tpl_err(t, "%s:%d: fallback_reply: no template key '%s' in %s", cfg_path, pc_node_line(fr),
              pc_scalar(fr), d->path);
  }
  pc_doc_free(cfg);
  /* A key of the default locale missing in another: its customers get the
   * default locale's text. It works, but is usually an oversight. */
  for (size_t i = 0; i < t->nfiles; i++) {
    const tpl_file *f = &t->files[i];
    if (f == d) continue;
    for (size_t k = 0; k < d->n; k++) {
      bool have = false;
      for (size_t j = 0; j < f->n && !have; j++) have = strcmp(f->e[j].key, d->e[k].key) == 0;
      if (!have)
        tpl_warn(t, "%s:1: %s: missing in %s; its customers get the %s text (%s:%d)", f->path,
                 d->e[k].key, f->locale, d->locale, d->path, d->e[k].line);
    }
  }
  for (size_t i = 0; i < t->nfiles; i++) {
    const tpl_file *f = &t->files[i];
    if (f == d) continue;
    for (size_t j = 0; j < f->n; j++) {
      const tpl_entry *e = &f->e[j];
      const tpl_entry *de = NULL;
      for (size_t k = 0; k < d->n && !de; k++)
        if (strcmp(d->e[k].key, e->key) == 0) de = &d->e[k];
      if (!de) {
        tpl_err(t, "%s:%d: %s: missing in the default locale (%s)", f->path, e->line, e->key,
                d->locale);
        continue;
      }
      for (size_t off = 0; off < e->vars_len; off += strlen(e->vars + off) + 1)
        if (!has_var(de, e->vars + off) && strcmp(e->vars + off, "count") != 0)
          tpl_err(t, "%s:%d: %s: unknown placeholder {%s}: the default locale (%s) does not use it",
                  f->path, e->line, e->key, e->vars + off, d->locale);
    }
  }
}

static int tpl_load_protected(lua_State *L) {
  tpl_load *t = lua_touserdata(L, 1);
  lua_createtable(L, 0, 8);
  char path[1024];
  snprintf(path, sizeof path, "%s/templates", t->dir);
  DIR *dir = opendir(path);
  if (!dir) return 1; /* no templates: ctx:t raises for every key */
  /* Sorted order makes the error list stable across file systems. */
  char *names[TPL_MAX_LOCALES * 2];
  size_t nn = 0;
  struct dirent *de;
  while ((de = readdir(dir)) && nn < sizeof names / sizeof names[0]) {
    size_t stem;
    if (de->d_name[0] != '.' && has_yaml_ext(de->d_name, &stem)) names[nn++] = strdup(de->d_name);
  }
  closedir(dir);
  for (size_t i = 1; i < nn; i++)
    for (size_t j = i; j > 0 && names[j - 1] && names[j] && strcmp(names[j - 1], names[j]) > 0; j--) {
      char *x = names[j];
      names[j] = names[j - 1];
      names[j - 1] = x;
    }
  for (size_t i = 0; i < nn; i++) {
    size_t stem;
    if (names[i] && has_yaml_ext(names[i], &stem)) load_file(L, t, names[i], stem);
    free(names[i]);
  }
  cross_check(t);
  return 1;
}

int plr_templates_load(lua_State *L, const char *bot_dir, const char *default_locale,
                       char *err, size_t errlen) {
  return plr_templates_load_warn(L, bot_dir, default_locale, err, errlen, NULL, 0, NULL);
}

int plr_templates_load_warn(lua_State *L, const char *bot_dir, const char *default_locale,
                            char *err, size_t errlen, char *warn, size_t warnlen, int *nwarn) {
  tpl_load *t = calloc(1, sizeof *t);
  if (!t) return PARLEY_ENOMEM;
  t->warn = warn;
  t->warnlen = warnlen;
  if (warn && warnlen) warn[0] = '\0';
  t->dir = bot_dir;
  t->default_locale = default_locale;
  t->err = err;
  t->errlen = errlen;
  if (err && errlen) err[0] = '\0';
  lua_pushcfunction(L, tpl_load_protected);
  lua_pushlightuserdata(L, t);
  int rc = lua_pcall(L, 1, 1, 0);
  int status = t->status;
  if (nwarn) *nwarn = t->nwarn;
  if (rc != LUA_OK) {
    if (err && errlen) snprintf(err, errlen, "%s/templates: %s", bot_dir, lua_tostring(L, -1));
    lua_pop(L, 1);
    status = rc == LUA_ERRMEM ? PARLEY_ENOMEM : PARLEY_ECONFIG;
  } else if (status) {
    lua_pop(L, 1);
  }
  for (size_t i = 0; i < t->nfiles; i++) {
    for (size_t j = 0; j < t->files[i].n; j++) {
      free(t->files[i].e[j].key);
      free(t->files[i].e[j].vars);
    }
    free(t->files[i].e);
  }
  free(t);
  return status;
}

/* ICU. ------------------------------------------------------------------ */

#define PLURAL_CACHE "parley.plural_cache"
#define PLURAL_META "parley.plural_rules"

typedef struct plural_ud {
  UPluralRules *rules;
} plural_ud;

static int plural_gc(lua_State *L) {
  plural_ud *u = luaL_checkudata(L, 1, PLURAL_META);
  if (u->rules) uplrules_close(u->rules);
  u->rules = NULL;
  return 0;
}

/* Rules per locale are opened once and kept in a registry table; their
 * userdata closes them when the state closes. */
static UPluralRules *plural_rules(lua_State *L, const char *locale) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, PLURAL_CACHE);
  int cache = lua_gettop(L);
  if (lua_getfield(L, cache, locale) == LUA_TUSERDATA) {
    plural_ud *u = lua_touserdata(L, -1);
    lua_pop(L, 2);
    return u->rules;
  }
  lua_pop(L, 1);
  plural_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
  u->rules = NULL;
  if (luaL_newmetatable(L, PLURAL_META)) {
    lua_pushcfunction(L, plural_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  char icu[TPL_LOCALE_MAX];
  size_t i = 0;
  for (; locale[i] && i + 1 < sizeof icu; i++) icu[i] = locale[i] == '-' ? '_' : locale[i];
  icu[i] = '\0';
  UErrorCode st = U_ZERO_ERROR;
  u->rules = uplrules_open(icu, &st);
  if (U_FAILURE(st)) u->rules = NULL;
  lua_setfield(L, cache, locale);
  lua_pop(L, 1);
  return u->rules;
}

int plr_l_plural(lua_State *L) {
  const char *locale = luaL_checkstring(L, 1);
  double n = luaL_checknumber(L, 2);
  UPluralRules *rules = plural_rules(L, locale);
  if (!rules) {
    lua_pushliteral(L, "other");
    return 1;
  }
  UChar kw[32];
  UErrorCode st = U_ZERO_ERROR;
  int32_t len = uplrules_select(rules, n, kw, 32, &st);
  if (U_FAILURE(st) || len <= 0 || len >= 32) {
    lua_pushliteral(L, "other");
    return 1;
  }
  char out[32];
  u_UCharsToChars(kw, out, len);
  out[len] = '\0';
  lua_pushstring(L, out);
  return 1;
}

static void chain_add(lua_State *L, int list, const char *loc) {
  lua_Integer n = (lua_Integer)luaL_len(L, list);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, list, i);
    bool same = strcmp(lua_tostring(L, -1), loc) == 0;
    lua_pop(L, 1);
    if (same) return;
  }
  lua_pushstring(L, loc);
  lua_rawseti(L, list, n + 1);
}

/* Adds loc and its truncations ("zh-hant-tw", "zh-hant"); the bare language
 * is added only when keep_lang, so that the likely-subtag forms come before
 * it. */
static void chain_truncations(lua_State *L, int list, const char *loc, bool keep_lang) {
  char buf[TPL_LOCALE_MAX];
  snprintf(buf, sizeof buf, "%s", loc);
  for (;;) {
    char *dash = strrchr(buf, '-');
    if (!dash && !keep_lang) return;
    chain_add(L, list, buf);
    if (!dash) return;
    *dash = '\0';
  }
}

int plr_l_locale_chain(lua_State *L) {
  const char *given = luaL_checkstring(L, 1);
  const char *def = luaL_optstring(L, 2, "en");
  char loc[TPL_LOCALE_MAX], dloc[TPL_LOCALE_MAX];
  norm_locale(given, loc, sizeof loc);
  norm_locale(def, dloc, sizeof dloc);
  lua_createtable(L, 8, 0);
  int list = lua_gettop(L);
  if (valid_locale(loc)) {
    chain_truncations(L, list, loc, false);
    /* zh-TW maximizes to zh_Hant_TW: that is how a customer in Taiwan
     * finds the zh-Hant templates. */
    char icu[TPL_LOCALE_MAX], max[TPL_LOCALE_MAX];
    size_t i = 0;
    for (; loc[i] && i + 1 < sizeof icu; i++) icu[i] = loc[i] == '-' ? '_' : loc[i];
    icu[i] = '\0';
    UErrorCode st = U_ZERO_ERROR;
    int32_t n = uloc_addLikelySubtags(icu, max, (int32_t)sizeof max, &st);
    if (U_SUCCESS(st) && n > 0 && n < (int32_t)sizeof max) {
      max[n] = '\0';
      char nmax[TPL_LOCALE_MAX];
      norm_locale(max, nmax, sizeof nmax);
      chain_truncations(L, list, nmax, false);
    }
    chain_truncations(L, list, loc, true);
  }
  chain_add(L, list, dloc);
  return 1;
}

/* YAML to Lua. ---------------------------------------------------------- */

/* YAML's own typing: a plain true/false or number becomes a boolean or a
 * number; a quoted scalar ("01234", 'true') stays the string it was written
 * as, as docs/config.md promises. */
static void push_scalar(lua_State *L, const pc_node *n, bool typed) {
  const char *s = pc_scalar(n);
  if (typed && !pc_scalar_quoted(n)) {
    if (strcmp(s, "true") == 0) {
      lua_pushboolean(L, 1);
      return;
    }
    if (strcmp(s, "false") == 0) {
      lua_pushboolean(L, 0);
      return;
    }
    if (*s && lua_stringtonumber(L, s) != 0) return;
  }
  lua_pushstring(L, s);
}

void plr_push_yaml(lua_State *L, const pc_node *n, bool typed) {
  luaL_checkstack(L, 4, "YAML nested too deeply");
  switch (pc_node_kind(n)) {
  case PC_SCALAR:
    push_scalar(L, n, typed);
    return;
  case PC_MAP:
    lua_createtable(L, 0, (int)pc_len(n));
    for (size_t i = 0; i < pc_len(n); i++) {
      plr_push_yaml(L, pc_at(n, i), typed);
      lua_setfield(L, -2, pc_key_at(n, i) ? pc_key_at(n, i) : "");
    }
    return;
  case PC_SEQ:
    lua_createtable(L, (int)pc_len(n), 0);
    for (size_t i = 0; i < pc_len(n); i++) {
      plr_push_yaml(L, pc_at(n, i), typed);
      lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    return;
  default:
    lua_createtable(L, 0, 0);
    return;
  }
}
