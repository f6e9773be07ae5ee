// JSON-RPC to the node that served this page, the admin token (this tab only) and the /ws feed.
// Every URL is relative to the page, so the console works behind a reverse proxy; the token is
// attached only to requests whose origin is the page's own.

const TOKEN_KEY = "vigil.console.adminToken";
const UNAUTHORIZED = -32006;
let nextId = 1;
const connListeners = new Set();
let connState = "connecting";

export class RpcError extends Error {
  constructor(code, message, data) {
    super(message);
    this.code = code;
    this.data = data;
  }
  get unauthorized() {
    return this.code === UNAUTHORIZED;
  }
}

export class NetworkError extends Error {}

export function rpcUrl() {
  return new URL("rpc", document.baseURI);
}

export function wsUrl() {
  const url = new URL("ws", document.baseURI);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url;
}

export const token = {
  get() {
    return sessionStorage.getItem(TOKEN_KEY);
  },
  set(value) {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  },
};

export function onConnection(fn) {
  connListeners.add(fn);
  fn(connState);
  return () => connListeners.delete(fn);
}

export function setConnection(state) {
  if (state === connState) return;
  connState = state;
  for (const fn of connListeners) fn(state);
}

/** One JSON-RPC call; admin calls carry the bearer token (to this page's origin only). */
export async function rpc(method, params, { admin = false, timeoutMs = 8000 } = {}) {
  const url = rpcUrl();
  const headers = { "Content-Type": "application/json" };
  if (admin) {
    const t = token.get();
    if (!t) throw new RpcError(UNAUTHORIZED, "no admin token entered");
    if (url.origin !== window.location.origin) throw new Error("refusing to send the token elsewhere");
    headers.Authorization = "Bearer " + t;
  }
  const body = { jsonrpc: "2.0", id: nextId++, method };
  if (params !== undefined) body.params = params;
  let resp;
  try {
    resp = await fetch(url, {
      method: "POST",
      headers,
      body: JSON.stringify(body),
      credentials: "omit",
      cache: "no-store",
      signal: AbortSignal.timeout(timeoutMs),
    });
  } catch (err) {
    setConnection("reconnecting");
    throw new NetworkError("the node does not answer (" + err.name + ")");
  }
  let answer;
  try {
    answer = await resp.json();
  } catch {
    setConnection("reconnecting");
    throw new NetworkError("the node answered HTTP " + resp.status + " without JSON");
  }
  if (connState !== "live" && ws.state !== "down") setConnection("live");
  if (answer.error) throw new RpcError(answer.error.code, answer.error.message, answer.error.data);
  return answer.result;
}

/** The /ws feed: subscribes to blocks, reconnects with backoff, and tells listeners. */
class Feed {
  constructor() {
    this.socket = null;
    this.listeners = new Set();
    this.state = "down";
    this.backoffMs = 500;
    this.timer = null;
  }

  start() {
    if (this.socket) return;
    let socket;
    try {
      socket = new WebSocket(wsUrl());
    } catch {
      this.retry();
      return;
    }
    this.socket = socket;
    socket.addEventListener("open", () => {
      this.state = "up";
      this.backoffMs = 500;
      setConnection("live");
      socket.send(JSON.stringify({ jsonrpc: "2.0", id: 1, method: "subscribe", params: { topic: "blocks" } }));
      this.emit({ type: "open" });
    });
    socket.addEventListener("message", (ev) => {
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (msg.method === "subscription" && msg.params && msg.params.result) this.emit(msg.params.result);
    });
    socket.addEventListener("close", () => {
      this.socket = null;
      this.state = "down";
      setConnection("reconnecting");
      this.retry();
    });
    socket.addEventListener("error", () => {
      // "close" follows and schedules the retry.
    });
  }

  retry() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.start(), this.backoffMs);
    this.backoffMs = Math.min(this.backoffMs * 2, 4000);
  }

  on(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  emit(event) {
    for (const fn of this.listeners) {
      try {
        fn(event);
      } catch (err) {
        console.warn("feed listener failed", err);
      }
    }
  }
}

export const ws = new Feed();
