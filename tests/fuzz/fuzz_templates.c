/* Fuzz target: bot templates (lua/src/templates.c).
 *
 * templates.c loads templates/<locale>.yaml files from a bot folder, so the
 * input is written to files of a private temporary folder on every run:
 *
 *   en.yaml \0 de.yaml \0 pt_BR.yaml \0 locale \0 number
 *
 * Parts that are absent leave their file absent ("en" is the default
 * locale, so a missing en.yaml is an error too). The templates are loaded
 * into a fresh Lua state: on success exactly one table is left on the
 * stack, { [locale] = { [key] = string | { [category] = string } } }; on
 * failure nothing is left and the error text is not empty. The fourth part
 * goes to plr_l_locale_chain (the chain always ends with the default
 * locale) and, with the fifth part as a number, to plr_l_plural (the result
 * is a CLDR category). Rendering lives in Lua (lua/lib/runtime.lua) and is
 * not reached from here. */
#include <stdbool.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#include <parley/error.h>

#include "fuzz_common.h"
#include "rt.h"

static char g_dir[512];
static const char *const files[] = {"en.yaml", "de.yaml", "pt_BR.yaml"};
#define N_FILES (sizeof files / sizeof files[0])

static void cleanup(void) {
  char path[600];
  for (size_t i = 0; i < N_FILES; i++) {
    snprintf(path, sizeof path, "%s/templates/%s", g_dir, files[i]);
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
  /* Under TMPDIR, which run_target.sh points at a folder it removes, so
   * nothing is left behind even when a crash skips cleanup(). */
  const char *tmp = getenv("TMPDIR");
  snprintf(g_dir, sizeof g_dir, "%s/parley-fuzz-tpl.XXXXXX", tmp && *tmp ? tmp : "/tmp");
  FZ_CHECK(mkdtemp(g_dir) != NULL, "mkdtemp failed");
  char path[600];
  snprintf(path, sizeof path, "%s/templates", g_dir);
  FZ_CHECK(mkdir(path, 0700) == 0, "mkdir %s failed", path);
  atexit(cleanup);
  return 0;
}

/* Splits off the next NUL-terminated part; false when the input is used up. */
static bool next_part(fz_reader *in, const uint8_t **p, size_t *n) {
  if (fz_empty(in)) return false;
  const uint8_t *end = memchr(in->p, 0, in->left);
  size_t len = end ? (size_t)(end - in->p) : in->left;
  size_t got;
  *p = fz_bytes(in, len, &got);
  *n = got;
  if (end) (void)fz_u8(in);
  return true;
}

/* Checks the loaded table: locales map to tables of strings, namespaces
 * having been flattened into dotted keys and plural maps kept as tables of
 * category strings. */
static void check_table(lua_State *L, int idx, int depth) {
  FZ_CHECK(depth <= 3, "templates nested %d levels", depth);
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    FZ_CHECK(lua_type(L, -2) == LUA_TSTRING, "template table with a %s key",
             luaL_typename(L, -2));
    int t = lua_type(L, -1);
    FZ_CHECK(t == LUA_TSTRING || t == LUA_TTABLE, "template value of type %s",
             luaL_typename(L, -1));
    if (t == LUA_TTABLE) check_table(L, lua_gettop(L), depth + 1);
    lua_pop(L, 1);
  }
}

static void check_chain(lua_State *L, const char *locale) {
  int top = lua_gettop(L);
  lua_pushcfunction(L, plr_l_locale_chain);
  lua_pushstring(L, locale);
  lua_pushliteral(L, "en");
  FZ_CHECK(lua_pcall(L, 2, 1, 0) == LUA_OK, "locale_chain raised: %s", lua_tostring(L, -1));
  FZ_CHECK(lua_istable(L, -1), "locale_chain returned a %s", luaL_typename(L, -1));
  lua_Integer n = luaL_len(L, -1);
  bool has_default = false;
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, -1, i);
    FZ_CHECK(lua_type(L, -1) == LUA_TSTRING, "chain entry of type %s", luaL_typename(L, -1));
    if (strcmp(lua_tostring(L, -1), "en") == 0) has_default = true;
    lua_pop(L, 1);
  }
  FZ_CHECK(has_default, "locale chain of '%s' without the default locale", locale);
  lua_settop(L, top);
}

static void check_plural(lua_State *L, const char *locale, double num) {
  static const char *const cats[] = {"zero", "one", "two", "few", "many", "other"};
  int top = lua_gettop(L);
  lua_pushcfunction(L, plr_l_plural);
  lua_pushstring(L, locale);
  lua_pushnumber(L, num);
  FZ_CHECK(lua_pcall(L, 2, 1, 0) == LUA_OK, "plural raised: %s", lua_tostring(L, -1));
  const char *cat = lua_tostring(L, -1);
  FZ_CHECK(cat != NULL, "plural returned a %s", luaL_typename(L, -1));
  bool known = false;
  for (size_t i = 0; i < sizeof cats / sizeof cats[0]; i++)
    if (strcmp(cat, cats[i]) == 0) known = true;
  FZ_CHECK(known, "plural(%s, %g) = '%s'", locale, num, cat);
  lua_settop(L, top);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fz_reader in = {data, size};
  char path[600];
  for (size_t i = 0; i < N_FILES; i++) {
    snprintf(path, sizeof path, "%s/templates/%s", g_dir, files[i]);
    unlink(path);
    const uint8_t *p;
    size_t n;
    if (!next_part(&in, &p, &n)) continue;
    FILE *f = fopen(path, "wb");
    FZ_CHECK(f != NULL, "cannot write %s", path);
    FZ_CHECK(fwrite(p, 1, n, f) == n && fclose(f) == 0, "cannot write %s", path);
  }
  char locale[65] = "en";
  const uint8_t *p;
  size_t n;
  if (next_part(&in, &p, &n)) {
    if (n > sizeof locale - 1) n = sizeof locale - 1;
    memcpy(locale, p, n);
    locale[n] = '\0';
  }
  double num = 1;
  if (next_part(&in, &p, &n) && n) {
    char buf[32];
    if (n > sizeof buf - 1) n = sizeof buf - 1;
    memcpy(buf, p, n);
    buf[n] = '\0';
    num = strtod(buf, NULL);
  }

  lua_State *L = luaL_newstate();
  FZ_CHECK(L != NULL, "luaL_newstate failed");
  char err[2048];
  memset(err, 'x', sizeof err);
  int top = lua_gettop(L);
  int rc = plr_templates_load(L, g_dir, "en", err, sizeof err);
  FZ_CHECK(memchr(err, '\0', sizeof err) != NULL, "error text not terminated");
  if (rc == 0) {
    FZ_CHECK(lua_gettop(L) == top + 1 && lua_istable(L, -1),
             "success left %d values, the top a %s", lua_gettop(L) - top,
             luaL_typename(L, -1));
    check_table(L, lua_gettop(L), 0);
    lua_pop(L, 1);
  } else {
    FZ_CHECK(rc == PARLEY_ECONFIG || rc == PARLEY_ENOMEM, "undocumented status %d", rc);
    FZ_CHECK(err[0] != '\0', "failure %d without an error text", rc);
    FZ_CHECK(lua_gettop(L) == top, "failure left %d values", lua_gettop(L) - top);
  }
  check_chain(L, locale);
  check_plural(L, locale, num);
  lua_close(L);
  return 0;
}
