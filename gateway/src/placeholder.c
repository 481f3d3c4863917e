/* Placeholder until the gateway lands. */
int parley_gateway_placeholder(void);
int parley_gateway_placeholder(void) { return 0; }
