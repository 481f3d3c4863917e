// The browser client's public API (docs/web.md).
export { ParleyClient, ParleyError, DEFAULTS, newMessageId, reconnectDelay, resendDelay, validConversation } from "./client.js";
export { Timeline } from "./timeline.js";
export { lowerBound, insertBySeq, indexOfSeq } from "./sorted.js";
export { ERROR, ERROR_NAME } from "./proto.js";
