/* Fuzz target: template rendering (render in lua/lib/runtime.lua, with the
 * locale chain and plural categories of lua/src/templates.c), as bot code
 * reaches it through parley.t.
 *
 * A run writes a bot folder's templates, loads the bot with plr_vm_load
 * (the real sandboxed state, templates checked by templates.c; the state of
 * the previous run is kept while the template files stay the same), and
 * calls parley.t from a chunk running in the bot's environment, with the
 * instruction budget and the memory cap of bot code.
 * The input:
 *
 *   flags u8
 *   en text \0 tag \0 tag text \0 locale \0 var records...
 *
 * en.yaml gets the key "k" with the en text (as a double-quoted YAML
 * string, control bytes and line separators escaped; with flag 1 a plural
 * map whose "one" and "other" both hold the text). When the tag is a file
 * name of letters, digits, '-' or '_' other than "en", <tag>.yaml gets "k"
 * with the tag text. A template file that does not load ends the run.
 *
 * parley.t(locale, key, vars) is called with the locale part (flag 8: nil,
 * flag 16: a table), key "k" (flag 32: a key that does not exist) and the
 * vars table (flag 2: nil, flag 4: a string). A var record is
 *
 *   kind u8, name length u8, name, value length u16 (LE), value
 *
 * with kind & 7: 0 string (any bytes: invalid UTF-8, NULs), 1 integer (the
 * value's first 8 bytes LE), 2 float (the same bytes as a double: NaN,
 * infinities), 3 boolean, 4 plain table, 5 table with __tostring giving the
 * value, 6 huge string (the value repeated to (first u16 + 1) * 64 bytes,
 * at most 4 MiB), 7 function.
 *
 * A model of the documented behaviour (docs/lua-api.md, Templates) renders
 * the same template: placeholders {name} left to right, each filled with
 * tostring of a string, number or boolean var or of a table with
 * __tostring; a missing var, a var of another type, a value that is not
 * valid UTF-8 or holds a NUL, and a result longer than the reply text limit
 * (16 KiB) raise. Either locale's template may be the one rendered (the
 * chain decides); the result must be exactly one of the model's, an error
 * of the same kind, raised at the bot's line, valid UTF-8 and no longer
 * than the template allows (a value, possibly huge, is never quoted). */
#include <stdbool.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#include <parley/error.h>

#include "fuzz_common.h"
#include "vm.h"

#define FR_TEXT_MAX (16 * 1024) /* TEXT_MAX of runtime.lua: a reply's text */
#define FR_HUGE_MAX (4u << 20)
#define FR_VARS_MAX 64
#define FR_ERR_LINE_MAX 512

static char g_dir[512];
static char g_tag_path[600];
static bool g_verbose; /* FUZZ_RENDER_VERBOSE set: each result to stderr */

static const char BOT_YAML[] = "name: fuzzrender\ndefault_locale: en\n";
static const char BOT_LUA[] = "return parley.bot()\n";
/* Runs in the bot's environment, as bot code: the error positions of
 * parley.t must point here ("botcode:1:"). */
static const char BOT_CODE[] =
    "local function show(s) return setmetatable({}, {__tostring = function() return s end}) "
    "end return function(l, k, v) local s = parley.t(l, k, v) return s end, show";

static void write_file(const char *name, const char *text, size_t n) {
  char path[600];
  snprintf(path, sizeof path, "%s/%s", g_dir, name);
  FILE *f = fopen(path, "wb");
  FZ_CHECK(f != NULL, "cannot write %s", path);
  FZ_CHECK(fwrite(text, 1, n, f) == n && fclose(f) == 0, "cannot write %s", path);
}

/* A growable byte string with a hard maximum (the checks need room for the
 * model's results only up to the limit plus one value). */
typedef struct fr_buf {
  char *p;
  size_t n, cap;
} fr_buf;

static void buf_add(fr_buf *b, const void *s, size_t n) {
  if (b->n + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + n + 1) cap *= 2;
    b->p = realloc(b->p, cap);
    FZ_CHECK(b->p != NULL, "out of memory");
    b->cap = cap;
  }
  memcpy(b->p + b->n, s, n);
  b->n += n;
  b->p[b->n] = '\0';
}

static plr_vm *g_vm;   /* the bot of the previous run */
static fr_buf g_key;   /* the template files it was loaded from */

static void cleanup(void) {
  plr_vm_free(g_vm);
  g_vm = NULL;
  free(g_key.p);
  static const char *const files[] = {"bot.yaml", "bot.lua", "templates/en.yaml"};
  char path[600];
  if (g_tag_path[0]) unlink(g_tag_path);
  for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
    snprintf(path, sizeof path, "%s/%s", g_dir, files[i]);
    unlink(path);
  }
  snprintf(path, sizeof path, "%s/templates", g_dir);
  rmdir(path);
  rmdir(g_dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  g_verbose = getenv("FUZZ_RENDER_VERBOSE") != NULL;
  /* Under TMPDIR, which run_target.sh points at a folder it removes. */
  const char *tmp = getenv("TMPDIR");
  snprintf(g_dir, sizeof g_dir, "%s/parley-fuzz-render.XXXXXX", tmp && *tmp ? tmp : "/tmp");
  FZ_CHECK(mkdtemp(g_dir) != NULL, "mkdtemp failed");
  char path[600];
  snprintf(path, sizeof path, "%s/templates", g_dir);
  FZ_CHECK(mkdir(path, 0700) == 0, "mkdir %s failed", path);
  write_file("bot.yaml", BOT_YAML, sizeof BOT_YAML - 1);
  write_file("bot.lua", BOT_LUA, sizeof BOT_LUA - 1);
  atexit(cleanup);
  return 0;
}

/* Splits off the next NUL-terminated part; an absent part is empty. */
static void next_part(fz_reader *in, const uint8_t **p, size_t *n) {
  const uint8_t *end = memchr(in->p, 0, in->left);
  size_t len = end ? (size_t)(end - in->p) : in->left;
  *p = fz_bytes(in, len, n);
  if (end) (void)fz_u8(in);
}

/* The template as a double-quoted YAML scalar. Control bytes and DEL are
 * escaped; NEL, LS and PS are escaped too, because a YAML reader folds them
 * as line breaks inside a quoted scalar. Other bytes go as they are: text
 * that is not UTF-8 makes the file fail to load. */
static void yaml_quoted(fr_buf *b, const uint8_t *s, size_t n) {
  buf_add(b, "\"", 1);
  for (size_t i = 0; i < n; i++) {
    char esc[8];
    if (s[i] == '"' || s[i] == '\\') {
      esc[0] = '\\', esc[1] = (char)s[i];
      buf_add(b, esc, 2);
    } else if (s[i] < 0x20 || s[i] == 0x7f) {
      snprintf(esc, sizeof esc, "\\x%02x", s[i]);
      buf_add(b, esc, 4);
    } else if (s[i] == 0xc2 && i + 1 < n && s[i + 1] == 0x85) {
      buf_add(b, "\\N", 2);
      i++;
    } else if (s[i] == 0xe2 && i + 2 < n && s[i + 1] == 0x80 &&
               (s[i + 2] == 0xa8 || s[i + 2] == 0xa9)) {
      buf_add(b, s[i + 2] == 0xa8 ? "\\L" : "\\P", 2);
      i += 2;
    } else {
      buf_add(b, &s[i], 1);
    }
  }
  buf_add(b, "\"", 1);
}

static void write_template(const char *path, const uint8_t *s, size_t n, bool plural) {
  fr_buf b = {0};
  if (plural) {
    buf_add(&b, "k:\n  one: ", 10);
    yaml_quoted(&b, s, n);
    buf_add(&b, "\n  other: ", 10);
    yaml_quoted(&b, s, n);
  } else {
    buf_add(&b, "k: ", 3);
    yaml_quoted(&b, s, n);
  }
  buf_add(&b, "\n", 1);
  FILE *f = fopen(path, "wb");
  FZ_CHECK(f != NULL, "cannot write %s", path);
  FZ_CHECK(fwrite(b.p, 1, b.n, f) == b.n && fclose(f) == 0, "cannot write %s", path);
  free(b.p);
}

enum { VK_STRING, VK_INT, VK_FLOAT, VK_BOOL, VK_TABLE, VK_SHOW, VK_HUGE, VK_FUNCTION };

typedef struct fr_var {
  char name[256];
  size_t name_len;
  int kind;
  char *text; /* what tostring gives, for the kinds that can be shown */
  size_t len;
  int64_t i;  /* VK_INT */
  double d;   /* VK_FLOAT */
} fr_var;

/* The model's outcome of rendering one template. */
typedef enum {
  OUT_OK,
  OUT_MISSING,   /* a placeholder without a var */
  OUT_TYPE,      /* a var that cannot be shown (table, function) */
  OUT_UTF8,      /* a value that is not valid UTF-8 */
  OUT_NUL,       /* a value with a NUL byte */
  OUT_TOO_LONG,  /* the result is over the limit */
  OUT_COUNT,     /* a plural template without a numeric count */
} fr_outcome;

typedef struct fr_model {
  fr_outcome out;
  const char *name; /* the var of the error, in the template text */
  size_t name_len;
  fr_buf text;      /* the result when OUT_OK */
} fr_model;

static const fr_var *find_var(const fr_var *vars, size_t n, const char *name, size_t len) {
  /* The last record of a name wins, as lua_setfield does. */
  for (size_t i = n; i-- > 0;)
    if (vars[i].name_len == len && memcmp(vars[i].name, name, len) == 0) return &vars[i];
  return NULL;
}

static bool name_start(unsigned char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
static bool name_char(unsigned char c) { return name_start(c) || (c >= '0' && c <= '9'); }

/* Renders tpl as the documentation says. vars NULL: no vars table. */
static void model_render(fr_model *m, const char *tpl, size_t n, const fr_var *vars,
                         size_t nvars, bool have_vars) {
  m->out = OUT_OK;
  m->text.n = 0;
  buf_add(&m->text, "", 0);
  size_t added = 0;
  size_t i = 0;
  while (i < n) {
    if (tpl[i] == '{' && i + 1 < n && name_start((unsigned char)tpl[i + 1])) {
      size_t j = i + 1;
      while (j < n && name_char((unsigned char)tpl[j])) j++;
      if (j < n && tpl[j] == '}') {
        size_t len = j - i - 1;
        m->name = tpl + i + 1;
        m->name_len = len;
        const fr_var *v = have_vars ? find_var(vars, nvars, tpl + i + 1, len) : NULL;
        if (!v) {
          m->out = OUT_MISSING;
          return;
        }
        if (v->kind == VK_TABLE || v->kind == VK_FUNCTION) {
          m->out = OUT_TYPE;
          return;
        }
        if (!fz_utf8_ok(v->text, v->len)) {
          m->out = OUT_UTF8;
          return;
        }
        if (memchr(v->text, 0, v->len)) {
          m->out = OUT_NUL;
          return;
        }
        /* The values alone over the limit: the result is too, whatever
         * the rest of the template. */
        added += v->len;
        if (added > FR_TEXT_MAX) {
          m->out = OUT_TOO_LONG;
          return;
        }
        buf_add(&m->text, v->text, v->len);
        i = j + 1;
        continue;
      }
    }
    buf_add(&m->text, &tpl[i], 1);
    i++;
  }
  if (m->text.n > FR_TEXT_MAX) m->out = OUT_TOO_LONG;
}

/* What Lua's tostring gives for a float (lua_Number2str, "%.14g", with
 * ".0" added when the result looks like an integer). */
static void float_text(fr_var *v, double d) {
  char buf[64];
  snprintf(buf, sizeof buf, "%.14g", d);
  if (buf[strspn(buf, "-0123456789")] == '\0') strcat(buf, ".0");
  v->len = strlen(buf);
  v->text = strdup(buf);
  FZ_CHECK(v->text != NULL, "out of memory");
}

/* Checks an error against one model outcome. */
static bool error_matches(const char *err, const fr_model *m) {
  fr_buf want = {0};
  bool ok = false;
  switch (m->out) {
    case OUT_MISSING:
    case OUT_TYPE:
    case OUT_UTF8:
    case OUT_NUL:
      buf_add(&want, m->out == OUT_MISSING ? "needs var '" : ": var '", m->out == OUT_MISSING ? 11 : 7);
      buf_add(&want, m->name, m->name_len);
      buf_add(&want, "'", 1);
      ok = strstr(err, want.p) != NULL;
      free(want.p);
      if (!ok || m->out == OUT_MISSING) return ok;
      if (m->out == OUT_UTF8) return strstr(err, "UTF-8") != NULL;
      if (m->out == OUT_NUL) return strstr(err, "NUL") != NULL;
      return strstr(err, "string, number or boolean") != NULL;
    case OUT_TOO_LONG:
      return strstr(err, "longer than 16384 bytes") != NULL;
    case OUT_COUNT:
      return strstr(err, "needs a numeric 'count'") != NULL;
    case OUT_OK:
      return false;
  }
  return false;
}

static const char *outcome_name(fr_outcome o) {
  static const char *const names[] = {"ok", "missing var", "type", "UTF-8", "NUL", "too long", "count"};
  return names[o];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fz_reader in = {data, size};
  uint8_t flags = fz_u8(&in);
  const uint8_t *en, *tag, *tag_text, *locale;
  size_t en_n, tag_n, tag_text_n, locale_n;
  next_part(&in, &en, &en_n);
  next_part(&in, &tag, &tag_n);
  next_part(&in, &tag_text, &tag_text_n);
  next_part(&in, &locale, &locale_n);
  bool plural = flags & 1;
  /* Misuse: a locale that is a table, a key that does not exist, vars that
   * are not a table. */
  bool bad_locale = !(flags & 8) && (flags & 16);
  bool bad_key = flags & 32;
  bool bad_vars = !(flags & 2) && (flags & 4);
  bool misuse = bad_locale || bad_key || bad_vars;

  bool tag_file = tag_n > 0 && tag_n <= 16;
  for (size_t i = 0; i < tag_n && tag_file; i++)
    tag_file = name_char(tag[i]) || tag[i] == '-';
  if (tag_file && tag_n == 2 && (tag[0] | 0x20) == 'e' && (tag[1] | 0x20) == 'n')
    tag_file = false;

  /* Loading a bot takes most of a run; the state of the previous run is
   * used again when its template files were the same. */
  fr_buf key = {0};
  buf_add(&key, plural ? "p" : "s", 1);
  buf_add(&key, en, en_n);
  buf_add(&key, "", 1);
  if (tag_file) {
    buf_add(&key, tag, tag_n);
    buf_add(&key, "", 1);
    buf_add(&key, tag_text, tag_text_n);
  }
  if (!(g_key.n == key.n && memcmp(g_key.p, key.p, key.n) == 0)) {
    plr_vm_free(g_vm);
    g_vm = NULL;
    free(g_key.p);
    g_key = key;
    key.p = NULL;
    char path[600];
    snprintf(path, sizeof path, "%s/templates/en.yaml", g_dir);
    write_template(path, en, en_n, plural);
    if (g_tag_path[0]) unlink(g_tag_path);
    g_tag_path[0] = '\0';
    if (tag_file) {
      snprintf(g_tag_path, sizeof g_tag_path, "%s/templates/%.*s.yaml", g_dir, (int)tag_n,
               (const char *)tag);
      write_template(g_tag_path, tag_text, tag_text_n, false);
    }
    char err[2048] = "";
    if (plr_vm_load(NULL, g_dir, &g_vm, err, sizeof err) != 0) {
      /* Templates that do not load are fuzz_templates' business. */
      FZ_CHECK(err[0] != '\0', "load failed without an error text");
      g_vm = NULL;
    }
  }
  free(key.p);
  plr_vm *vm = g_vm;
  if (!vm) return 0;

  /* The vars, as C sees them. */
  fr_var vars[FR_VARS_MAX];
  size_t nvars = 0;
  while (!fz_empty(&in) && nvars < FR_VARS_MAX) {
    fr_var *v = &vars[nvars++];
    uint8_t kind = fz_u8(&in);
    v->kind = kind & 7;
    size_t got;
    const uint8_t *name = fz_bytes(&in, fz_u8(&in), &got);
    memcpy(v->name, name, got);
    v->name_len = got;
    size_t vlen;
    const uint8_t *val = fz_bytes(&in, fz_u16(&in), &vlen);
    uint8_t num[8] = {0};
    memcpy(num, val, vlen < 8 ? vlen : 8);
    v->text = NULL;
    v->len = 0;
    switch (v->kind) {
      case VK_STRING:
      case VK_SHOW:
        v->text = malloc(vlen + 1);
        FZ_CHECK(v->text != NULL, "out of memory");
        memcpy(v->text, val, vlen);
        v->len = vlen;
        break;
      case VK_INT: {
        memcpy(&v->i, num, 8);
        char buf[32];
        snprintf(buf, sizeof buf, "%lld", (long long)v->i);
        v->text = strdup(buf);
        v->len = strlen(buf);
        break;
      }
      case VK_FLOAT: {
        memcpy(&v->d, num, 8);
        float_text(v, v->d);
        break;
      }
      case VK_BOOL:
        v->text = strdup(num[0] & 1 ? "true" : "false");
        v->len = strlen(v->text);
        break;
      case VK_HUGE: {
        size_t want = ((size_t)(num[0] | num[1] << 8) + 1) * 64;
        if (want > FR_HUGE_MAX) want = FR_HUGE_MAX;
        const uint8_t *rep = vlen > 2 ? val + 2 : (const uint8_t *)"x";
        size_t rn = vlen > 2 ? vlen - 2 : 1;
        v->text = malloc(want + 1);
        FZ_CHECK(v->text != NULL, "out of memory");
        for (size_t i = 0; i < want; i++) v->text[i] = (char)rep[i % rn];
        v->len = want;
        break;
      }
      default:
        break;
    }
  }

  /* The model: either locale's template may be the one the chain picks. */
  bool have_vars = !(flags & 2) && !bad_vars;
  fr_model models[2] = {{0}, {0}};
  size_t nmodels = 0;
  const fr_var *count = have_vars ? find_var(vars, nvars, "count", 5) : NULL;
  if (plural && (!count || (count->kind != VK_INT && count->kind != VK_FLOAT))) {
    models[nmodels++].out = OUT_COUNT;
  } else {
    model_render(&models[nmodels++], (const char *)en, en_n, vars, nvars, have_vars);
  }
  if (tag_file) model_render(&models[nmodels++], (const char *)tag_text, tag_text_n, vars, nvars, have_vars);

  lua_State *L = plr_vm_state(vm);
  int top = lua_gettop(L);
  FZ_CHECK(luaL_loadbufferx(L, BOT_CODE, sizeof BOT_CODE - 1, "=botcode", "t") == LUA_OK,
           "bot code: %s", lua_tostring(L, -1));
  plr_vm_rt_get(vm, "make_env");
  FZ_CHECK(lua_pcall(L, 0, 1, 0) == LUA_OK, "make_env: %s", lua_tostring(L, -1));
  FZ_CHECK(lua_setupvalue(L, -2, 1) != NULL, "bot code without _ENV");
  FZ_CHECK(lua_pcall(L, 0, 2, 0) == LUA_OK, "bot code: %s", lua_tostring(L, -1));
  int show = lua_gettop(L);
  int render = show - 1;

  lua_pushvalue(L, render);
  if (flags & 8)
    lua_pushnil(L);
  else if (flags & 16)
    lua_newtable(L);
  else
    lua_pushlstring(L, (const char *)locale, locale_n);
  lua_pushstring(L, bad_key ? "no.such.key" : "k");
  if (flags & 2) {
    lua_pushnil(L);
  } else if (bad_vars) {
    lua_pushliteral(L, "not a table");
  } else {
    lua_createtable(L, 0, (int)nvars);
    for (size_t i = 0; i < nvars; i++) {
      fr_var *v = &vars[i];
      lua_pushlstring(L, v->name, v->name_len);
      switch (v->kind) {
        case VK_STRING:
        case VK_HUGE:
          lua_pushlstring(L, v->text, v->len);
          break;
        case VK_INT:
          lua_pushinteger(L, (lua_Integer)v->i);
          break;
        case VK_FLOAT:
          lua_pushnumber(L, v->d);
          break;
        case VK_BOOL:
          lua_pushboolean(L, v->text[0] == 't');
          break;
        case VK_TABLE:
          lua_newtable(L);
          break;
        case VK_SHOW:
          lua_pushvalue(L, show);
          lua_pushlstring(L, v->text, v->len);
          FZ_CHECK(lua_pcall(L, 1, 1, 0) == LUA_OK, "show: %s", lua_tostring(L, -1));
          break;
        default:
          lua_pushcfunction(L, plr_l_plural);
          break;
      }
      lua_rawset(L, -3);
    }
  }

  /* As a handler runs: the instruction budget and the memory cap of bot
   * code. */
  plr_vm_budget(vm, L, (int64_t)plr_vm_limits(vm)->instructions, false);
  vm->unlimited = false;
  int rc = lua_pcall(L, 3, 1, 0);
  vm->unlimited = true;

  if (g_verbose)
    fprintf(stderr, "fuzz_render: %s %.100s\n", rc == LUA_OK ? "rendered" : "raised",
            rc == LUA_OK ? "" : lua_tostring(L, -1));
  if (rc == LUA_OK) {
    size_t n;
    const char *s = lua_tolstring(L, -1, &n);
    FZ_CHECK(lua_type(L, -1) == LUA_TSTRING, "parley.t returned a %s", luaL_typename(L, -1));
    FZ_CHECK(!misuse, "misuse (flags %#x) rendered '%.80s'", flags, s);
    FZ_CHECK(n <= FR_TEXT_MAX, "rendered %zu bytes, over the %d-byte limit", n, FR_TEXT_MAX);
    FZ_CHECK(fz_utf8_ok(s, n), "rendered text is not valid UTF-8");
    FZ_CHECK(memchr(s, 0, n) == NULL, "rendered text with a NUL byte");
    bool same = false;
    for (size_t i = 0; i < nmodels; i++)
      if (models[i].out == OUT_OK && models[i].text.n == n && memcmp(models[i].text.p, s, n) == 0)
        same = true;
    if (!same) {
      for (size_t i = 0; i < nmodels; i++)
        fprintf(stderr, "model %zu: %s '%.200s'\n", i, outcome_name(models[i].out),
                models[i].out == OUT_OK ? models[i].text.p : "");
    }
    FZ_CHECK(same, "rendered '%.200s' (%zu bytes), not what the documentation says", s, n);
  } else {
    FZ_CHECK(rc == LUA_ERRRUN, "parley.t failed with status %d: %s", rc, lua_tostring(L, -1));
    size_t n;
    const char *e = lua_tolstring(L, -1, &n);
    FZ_CHECK(e != NULL && n > 0, "error without a message");
    /* Bounded by the placeholder name it may quote, never by a value. */
    size_t longest = en_n > tag_text_n ? en_n : tag_text_n;
    FZ_CHECK(n <= FR_ERR_LINE_MAX + longest, "error of %zu bytes: '%.200s'", n, e);
    FZ_CHECK(fz_utf8_ok(e, n) && !memchr(e, 0, n), "error text is not clean UTF-8");
    /* Misuse is the caller's line, as every error of the API. */
    FZ_CHECK(strncmp(e, "botcode:1: ", 11) == 0, "error not at the caller's line: '%s'", e);
    bool known = false;
    if (misuse) {
      known = (bad_locale && strstr(e, "locale must be a string")) ||
              (bad_key && strstr(e, "unknown template key 'no.such.key'")) ||
              (bad_vars && strstr(e, "vars must be a table"));
    } else {
      for (size_t i = 0; i < nmodels; i++) known = known || error_matches(e, &models[i]);
    }
    if (!known) {
      for (size_t i = 0; i < nmodels; i++)
        fprintf(stderr, "model %zu: %s '%.*s'\n", i, outcome_name(models[i].out),
                models[i].out == OUT_OK ? 200 : (int)models[i].name_len,
                models[i].out == OUT_OK ? models[i].text.p : models[i].name);
    }
    FZ_CHECK(known, "error '%s' (flags %#x) is not one the documentation names", e, flags);
  }
  lua_pop(L, 3);
  FZ_CHECK(lua_gettop(L) == top, "%d values left on the stack", lua_gettop(L) - top);

  for (size_t i = 0; i < nvars; i++) free(vars[i].text);
  for (size_t i = 0; i < nmodels; i++) free(models[i].text.p);
  return 0;
}
