// Cairn's browser client: calls the HTTP API of any node of a cluster, moves
// to another node when the one it uses stops answering, and follows
// changefeeds that resume from their cursor, on any node, with no gap.
//
// A page uses it like this (the todo app at /apps/todo/ is a whole example):
//
//   import { Cairn, login } from "/lib/cairn.js";
//   const cairn = new Cairn(await login());    // the token from the login URL
//   await cairn.call("PUT", "/v1/tables/todos/docs/a1", { title: "milk" });
//   const feed = cairn.feed("/v1/tables/todos/changes", { includeInitial: true,
//     onEvent: (event) => ..., onStatus: (status) => ... });
//
// It needs nothing but the browser: fetch, streams and localStorage.

const STORE_KEY = "cairn.login";

// The login: a token (and, for the console's desired-state page, the cloud's
// address and token). `cairn up` and `cairn console` print login URLs whose
// fragment (never sent to a server) carries one-time codes:
// #code=...&cloud=...&cloud_code=... . They are traded here for tokens
// (POST /v1/login on the node, and on the cloud), kept in this origin's
// localStorage, and taken out of the address bar. A fragment with a token
// itself (#token=...) is taken as it is. Answers the login, or one with
// `error` set when a code could not be traded.
export async function login() {
  const fragment = new URLSearchParams(location.hash.replace(/^#/, ""));
  const given = ["token", "code", "cloud", "cloud_code", "cloud_token"].filter((key) => fragment.has(key));
  if (given.length) {
    const rest = new URLSearchParams(fragment);
    for (const key of given) rest.delete(key);
    const left = rest.toString();
    history.replaceState(null, "", location.pathname + location.search + (left ? "#" + left : ""));
    const saved = { token: fragment.get("token"), cloud: fragment.get("cloud"), cloudToken: fragment.get("cloud_token") };
    try {
      if (fragment.get("code")) saved.token = (await trade(location.origin + "/v1/login", fragment.get("code"))).token;
      if (saved.cloud && fragment.get("cloud_code")) saved.cloudToken = (await trade(saved.cloud.replace(/\/$/, "") + "/v1/login", fragment.get("cloud_code"))).token;
    } catch (error) {
      if (!saved.token) return { token: null, cloud: null, cloudToken: null, error };
      saved.error = error;
    }
    const kept = { token: saved.token, cloud: saved.cloud || null, cloudToken: saved.cloudToken || null };
    localStorage.setItem(STORE_KEY, JSON.stringify(kept));
    return Object.assign(kept, saved.error ? { error: saved.error } : {});
  }
  try {
    const saved = JSON.parse(localStorage.getItem(STORE_KEY) || "null");
    if (saved && typeof saved.token === "string") return saved;
  } catch (_) {
    // A damaged entry is no login.
  }
  return { token: null, cloud: null, cloudToken: null };
}

// POST url with a one-time code as the bearer token: the answer's JSON.
async function trade(url, code) {
  const response = await fetch(url, {
    method: "POST",
    headers: { Authorization: "Bearer " + code, "Content-Type": "application/json" },
    body: "{}",
    signal: AbortSignal.timeout(10000),
  });
  const json = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = json.error || {};
    throw new ApiError(response.status, error.code || "http_" + response.status, error.message || response.statusText);
  }
  return json;
}

export function saveLogin(saved) {
  localStorage.setItem(STORE_KEY, JSON.stringify(saved));
}

export function logout() {
  localStorage.removeItem(STORE_KEY);
}

// An answer the API gave with an error body ({"error": {"code", "message"}}),
// or a failure to reach any node (status 0).
export class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field || null;
  }
}

// Answers that say the node cannot serve now and that nothing was done:
// the same request may go to another node.
function nodeCannotServe(status, code) {
  return status === 503 && (code === "no_quorum" || code === "not_serving" || code === "node_stopping");
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export class Cairn {
  // `options.token`: the bearer token; `options.nodes`: base URLs to start
  // from (this page's origin when absent). The list grows from /v1/cluster.
  constructor(options = {}) {
    this.token = options.token || null;
    this.nodes = (options.nodes && options.nodes.length ? options.nodes : [location.origin]).slice();
    this.current = 0;
    this.listeners = new Set();
    this.down = new Set();
  }

  // The node calls go to now.
  get node() {
    return this.nodes[this.current];
  }

  // `listener(node, downNodes)` hears each change of node.
  onNodeChange(listener) {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  // Learns every member's address from a node's /v1/cluster (same scheme as
  // this page).
  async refreshNodes() {
    const view = await this.call("GET", "/v1/cluster");
    const scheme = new URL(this.node).protocol;
    const found = view.nodes.filter((n) => n.address).map((n) => `${scheme}//${n.address}`);
    const current = this.node;
    const merged = Array.from(new Set([current, ...found]));
    this.nodes = merged;
    this.current = merged.indexOf(current);
    return view;
  }

  // Moves to the next node after `failed`, when calls still go to it.
  moveOn(failed) {
    if (this.node !== failed) return;
    this.down.add(failed);
    this.current = (this.current + 1) % this.nodes.length;
    for (const listener of this.listeners) listener(this.node, this.down);
  }

  headers(extra) {
    const headers = Object.assign({}, extra || {});
    if (this.token) headers["Authorization"] = "Bearer " + this.token;
    return headers;
  }

  // One API call: the parsed JSON answer, or an ApiError. A node that cannot
  // be reached, or that answers that it cannot serve, is left for the next
  // one. A request that may have reached a node that then died is sent again
  // elsewhere only when sending it twice is harmless (GET, PUT, PATCH with
  // the same patch, DELETE); a POST fails then, with status 0.
  async call(method, path, body, options = {}) {
    const idempotent = method !== "POST";
    let lastError = null;
    for (let attempt = 0; attempt < this.nodes.length * 2; attempt++) {
      const node = this.node;
      let response;
      try {
        response = await fetch(node + path, {
          method,
          headers: this.headers(body === undefined ? options.headers : Object.assign({ "Content-Type": "application/json" }, options.headers)),
          body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
          signal: AbortSignal.timeout(options.timeoutMs || 10000),
        });
      } catch (error) {
        lastError = new ApiError(0, "unreachable", `${node} did not answer: ${error.message}`);
        this.moveOn(node);
        if (!idempotent) throw lastError;
        await sleep(attempt < this.nodes.length ? 0 : 250);
        continue;
      }
      this.down.delete(node);
      const text = await response.text();
      let json = null;
      try {
        json = text ? JSON.parse(text) : null;
      } catch (_) {
        json = null;
      }
      if (response.ok) return json;
      const error = (json && json.error) || {};
      lastError = new ApiError(response.status, error.code || "http_" + response.status, error.message || text || response.statusText, error.field);
      if (nodeCannotServe(response.status, error.code)) {
        this.moveOn(node);
        await sleep(attempt < this.nodes.length ? 0 : 250);
        continue;
      }
      throw lastError;
    }
    throw lastError;
  }

  // Follows a feed (`path`: /v1/tables/T/changes or /v1/changes/kv) and
  // hands each event to `onEvent`, in order, exactly once, across nodes:
  // when the stream breaks, it resumes after the last cursor on the next
  // node. `includeInitial` starts with the table's documents (events of type
  // "initial", then {"state": "ready"}); when a cursor is older than the
  // history the nodes keep (410 cursor_expired), `onExpired` is called and,
  // for a feed with `includeInitial`, it starts over from the documents.
  // `onReset` is called before the documents are sent (again), so that a
  // page can drop what it holds. `onStatus(text, live)` hears about
  // connections. Answers { close() }.
  feed(path, options = {}) {
    const feed = {
      cursor: options.since || null,
      closed: false,
      controller: null,
      close() {
        this.closed = true;
        if (this.controller) this.controller.abort();
      },
    };
    const status = options.onStatus || (() => {});
    const run = async () => {
      let failures = 0;
      while (!feed.closed) {
        const node = this.node;
        const params = new URLSearchParams(options.params || {});
        if (feed.cursor) params.set("since", feed.cursor);
        else if (options.includeInitial) {
          params.set("include_initial", "true");
          // The documents come again, as of a newer index: start afresh.
          if (options.onReset) options.onReset();
        }
        feed.controller = new AbortController();
        let ended = "";
        try {
          const response = await fetch(`${node}${path}?${params}`, {
            headers: this.headers({ Accept: "text/event-stream" }),
            signal: feed.controller.signal,
          });
          if (!response.ok) {
            let error = {};
            try {
              error = (await response.json()).error || {};
            } catch (_) {}
            if (response.status === 410) {
              feed.cursor = null;
              if (options.onExpired) options.onExpired();
              if (!options.includeInitial) throw new ApiError(410, error.code, error.message);
              continue;
            }
            if (!nodeCannotServe(response.status, error.code)) {
              const fatal = new ApiError(response.status, error.code || "http_" + response.status, error.message || response.statusText);
              status(`feed refused: ${fatal.message}`, false);
              if (options.onError) options.onError(fatal);
              return;
            }
            throw new ApiError(response.status, error.code, error.message);
          }
          status(`live from ${node}`, true);
          failures = 0;
          ended = await this.readEvents(response.body, feed, options.onEvent || (() => {}));
        } catch (error) {
          if (feed.closed) return;
          ended = error.message || String(error);
        }
        if (feed.closed) return;
        // The stream ended: this node is stopping, was killed, or could not
        // serve. Go on from the cursor on the next node.
        failures++;
        this.moveOn(node);
        status(`reconnecting (${node}: ${ended || "stream ended"})`, false);
        await sleep(Math.min(2000, failures <= this.nodes.length ? 100 : 100 * failures));
      }
    };
    run();
    return feed;
  }

  // Reads one stream of Server-Sent Events until it ends; answers why.
  // Heartbeats (comments) are skipped; a stream silent for 15 s is given
  // up (the node sends one every 5 s).
  async readEvents(body, feed, onEvent) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let id = null;
    let type = "message";
    let data = [];
    for (;;) {
      let timer;
      const silence = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error("no heartbeat for 15 s")), 15000);
      });
      let chunk;
      try {
        chunk = await Promise.race([reader.read(), silence]);
      } finally {
        clearTimeout(timer);
      }
      if (chunk.done) return "stream ended";
      buffer += chunk.value;
      let newline;
      while ((newline = buffer.search(/\r?\n/)) >= 0) {
        const line = buffer.slice(0, newline);
        buffer = buffer.slice(buffer[newline] === "\r" ? newline + 2 : newline + 1);
        if (line === "") {
          if (data.length) {
            const text = data.join("\n");
            if (type === "error") {
              let reason = text;
              try {
                const parsed = JSON.parse(text);
                reason = (parsed.error && parsed.error.message) || text;
              } catch (_) {}
              reader.cancel().catch(() => {});
              return reason;
            }
            const event = JSON.parse(text);
            onEvent(event);
            if (id) feed.cursor = id;
          }
          id = null;
          type = "message";
          data = [];
        } else if (line.startsWith(":")) {
          // A heartbeat.
        } else {
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "id") id = value;
          else if (field === "event") type = value;
          else if (field === "data") data.push(value);
        }
      }
    }
  }
}
