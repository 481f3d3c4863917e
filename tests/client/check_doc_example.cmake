# docs/sdk.md must contain examples/minimal_client.c verbatim, so that the
# example on the page is the one that is compiled.
file(READ ${EXAMPLE} example)
file(READ ${DOC} doc)
string(FIND "${doc}" "${example}" at)
if(at EQUAL -1)
  message(FATAL_ERROR "${DOC} does not contain ${EXAMPLE} verbatim")
endif()
