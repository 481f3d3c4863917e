/* Placeholder until the Lua runtime lands. */
int parley_lua_placeholder(void);
int parley_lua_placeholder(void) { return 0; }
