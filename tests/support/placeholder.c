/* Placeholder until test support lands. */
int parley_testsupport_placeholder(void);
int parley_testsupport_placeholder(void) { return 0; }
