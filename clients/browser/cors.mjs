// A real browser on another origin against a standalone API: what a web page of an allowed origin can do
// (create, list with the admin key, retry a create with an Idempotency-Key, follow a chat's event stream
// across a restart of the server), and what a page of any other origin cannot (read an answer, or have a
// "simple" POST that the browser sends without a preflight acted upon).
//
// Chromium is the system's (/usr/bin/chromium), driven by playwright-core, which downloads no browser. The
// checks run inside the pages with `fetch` and `EventSource`, so it is the browser that sends preflights,
// enforces CORS and reconnects event streams; node only starts things, and makes the requests a server
// or another client would (no `Origin`), or that name an `Origin` to look at the raw answer.
//
// Usage: node clients/browser/cors.mjs API_BINARY WORK_DIR
// The server's log is WORK_DIR/server.log; its data, WORK_DIR/data. Exits 1 on the first failed check.

import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { chromium } from "playwright-core";

const CHROMIUM = "/usr/bin/chromium";
// No sandbox (CI runs as root) and no GPU; and, as the machine may have no internet, none of the
// connections Chromium makes by itself (updates, sync, QUIC probes).
const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
const ADMIN_KEY = "browser-check-admin-key";
const RUN_TIMEOUT_MS = 120_000;
const READY_TIMEOUT_MS = 20_000;
const STOP_TIMEOUT_MS = 15_000;
const REQUEST_TIMEOUT_MS = 10_000;
const LIVE_EVENT_TIMEOUT_MS = 15_000;
// An EventSource waits a few seconds before it reconnects, and again after each refused attempt.
const RECONNECT_TIMEOUT_MS = 30_000;

class CheckFailed extends Error {}

function check(condition, what) {
  if (!condition) throw new CheckFailed(what);
}

function ok(what) {
  console.log(`browser: ${what} ok`);
}

/** A response as the checks read it, from the page or from node (status, readable headers, body, or
 * why the browser rejected it), in a few words for a failure message. */
function describe(response) {
  if (response.rejected) return `rejected with ${response.rejected}`;
  return `${response.status} ${response.text.slice(0, 300)}`;
}

function json(response, what) {
  try {
    return JSON.parse(response.text);
  } catch {
    throw new CheckFailed(`${what}: the body is not JSON: ${describe(response)}`);
  }
}

function expectStatus(response, status, what) {
  check(response.status === status, `${what}: wanted ${status}, got ${describe(response)}`);
}

/** The error format every error answer has (as tests/conformance's `expect_error` reads it). */
function expectError(response, status, code, what) {
  expectStatus(response, status, what);
  const type = response.headers["content-type"] ?? "";
  check(type.startsWith("application/json"), `${what}: an error without a JSON Content-Type: ${type}`);
  const body = json(response, what);
  check(
    Object.keys(body).length === 1 && typeof body.error === "object" && body.error !== null,
    `${what}: not {"error":{…}}: ${response.text}`,
  );
  check(body.error.code === code, `${what}: code ${body.error.code}, wanted ${code}`);
  check(
    typeof body.error.message === "string" && body.error.message.trim() !== "",
    `${what}: an error without a message: ${response.text}`,
  );
}

/** Everything started, undone in reverse order however the run ends. */
const cleanups = [];
/** What the pages logged (Chromium explains a CORS refusal there): printed when a check fails. */
const pageLog = [];

let cleaning = null;

/** Undoes everything once, however many ways the run ends at once (a failure, the deadline, a signal). */
function cleanUp() {
  cleaning ??= (async () => {
    for (const undo of cleanups.reverse()) {
      try {
        await undo();
      } catch (error) {
        console.error(`browser: while cleaning up: ${error.message}`);
      }
    }
  })();
  return cleaning;
}

/** Rejects after `ms`, with `what` as the failure. */
function deadline(ms, what) {
  let timer;
  const promise = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new CheckFailed(what)), ms);
  });
  return { promise, cancel: () => clearTimeout(timer) };
}

async function freePort() {
  const server = net.createServer();
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** An empty page, served from its own origin: the checks run in it through `page.evaluate`. */
async function servePage(name) {
  const server = http.createServer((_req, res) => {
    res.writeHead(200, { "Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store" });
    res.end(`<!doctype html><html><head><title>${name}</title></head><body></body></html>`);
  });
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  cleanups.push(async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  });
  return `http://127.0.0.1:${server.address().port}`;
}

/** The standalone API as a child process; `exited` resolves when it ends, however it ends. */
class Api {
  constructor({ binary, port, dataDir, logPath, allowedOrigin }) {
    Object.assign(this, { binary, port, dataDir, logPath, allowedOrigin });
    this.url = `http://127.0.0.1:${port}`;
    this.child = null;
  }

  start() {
    const log = fs.openSync(this.logPath, "a");
    const started = new Date().toISOString();
    fs.writeSync(log, `\n=== chatsys-api standalone on port ${this.port}, started ${started}\n`);
    const child = spawn(
      this.binary,
      [
        "standalone",
        "--listen",
        `127.0.0.1:${this.port}`,
        "--data-dir",
        this.dataDir,
        "--admin-key",
        ADMIN_KEY,
        "--cors-allowed-origins",
        this.allowedOrigin,
      ],
      { stdio: ["ignore", log, log] },
    );
    fs.closeSync(log);
    this.child = child;
    this.exited = new Promise((resolve) => {
      child.once("error", (error) => resolve(`could not be started (${error.message})`));
      child.once("exit", (code, signal) => resolve(signal ? `ended by ${signal}` : `exited with ${code}`));
    });
    this.exited.then(() => {
      if (this.child === child) this.child = null;
    });
  }

  /** Polls /readyz until it answers 200; fails at once if the process ends first. */
  async ready() {
    const exited = this.exited.then((how) => {
      throw new CheckFailed(`the API stopped before it was ready: it ${how} (its log: ${this.logPath})`);
    });
    const polling = (async () => {
      const until = Date.now() + READY_TIMEOUT_MS;
      while (Date.now() < until) {
        try {
          const response = await fetch(`${this.url}/readyz`, { signal: AbortSignal.timeout(1000) });
          await response.arrayBuffer();
          if (response.status === 200) return;
        } catch {
          // Not listening yet.
        }
        await sleep(100);
      }
      throw new CheckFailed(`the API did not answer /readyz 200 within ${READY_TIMEOUT_MS / 1000} s`);
    })();
    await Promise.race([polling, exited]);
  }

  /** SIGTERM, then waits for the process to end: a server must stop when asked. */
  async stop() {
    if (!this.child) return;
    this.child.kill("SIGTERM");
    const seconds = STOP_TIMEOUT_MS / 1000;
    const timeout = deadline(STOP_TIMEOUT_MS, `the API did not stop within ${seconds} s of SIGTERM`);
    try {
      await Promise.race([this.exited, timeout.promise]);
    } finally {
      timeout.cancel();
    }
  }

  /** For the clean-up: SIGTERM, and SIGKILL when that is not enough. */
  async kill() {
    if (!this.child) return;
    const child = this.child;
    child.kill("SIGTERM");
    const stopped = await Promise.race([this.exited.then(() => true), sleep(5000, false)]);
    if (!stopped) {
      child.kill("SIGKILL");
      await this.exited;
    }
  }
}

/** A request from node, as a server or a non-browser client makes it (node's fetch sends no `Origin`). */
async function nodeFetch(url, init = {}) {
  const response = await fetch(url, { ...init, signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) });
  const headers = {};
  response.headers.forEach((value, name) => {
    headers[name] = value;
  });
  return { status: response.status, headers, text: await response.text() };
}

/** A request from the page: the browser adds `Origin`, sends any preflight and enforces CORS. Only the
 * headers the server exposes are readable; a CORS failure is a rejection, reported as such. */
function pageFetch(page, url, init = {}) {
  return page.evaluate(
    async ({ url, init, timeoutMs }) => {
      try {
        const response = await fetch(url, { ...init, signal: AbortSignal.timeout(timeoutMs) });
        const headers = {};
        response.headers.forEach((value, name) => {
          headers[name] = value;
        });
        return { status: response.status, type: response.type, headers, text: await response.text() };
      } catch (error) {
        return { rejected: `${error.name}: ${error.message}` };
      }
    },
    { url, init, timeoutMs: REQUEST_TIMEOUT_MS },
  );
}

/** Polls the page until `predicate(state)` holds; fails with `what` and the last state after `ms`. */
async function waitInPage(page, read, predicate, ms, what) {
  const until = Date.now() + ms;
  let state;
  while (Date.now() < until) {
    state = await page.evaluate(read);
    if (predicate(state)) return state;
    await sleep(200);
  }
  throw new CheckFailed(`${what} within ${ms / 1000} s; the page has ${JSON.stringify(state)}`);
}

/** What the page's EventSource has seen so far. */
const streamState = () => ({
  received: window.received,
  opens: window.opens,
  errors: window.errors,
  readyState: window.source.readyState,
});

async function run(apiBinary, workDir) {
  fs.mkdirSync(workDir, { recursive: true });
  const allowed = await servePage("allowed origin");
  const other = await servePage("another origin");
  const api = new Api({
    binary: apiBinary,
    port: await freePort(),
    dataDir: path.join(workDir, "data"),
    logPath: path.join(workDir, "server.log"),
    allowedOrigin: allowed,
  });
  cleanups.push(() => api.kill());
  api.start();
  await api.ready();
  ok(`the API is ready at ${api.url}, allowing ${allowed}`);

  // The signals are this script's to handle: Playwright's own handlers would exit before the API is stopped.
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: CHROMIUM_ARGS,
    handleSIGINT: false,
    handleSIGTERM: false,
    handleSIGHUP: false,
  });
  cleanups.push(() => browser.close());
  const context = await browser.newContext();
  const page = await context.newPage();
  const otherPage = await context.newPage();
  for (const [name, p] of [
    ["allowed", page],
    ["other", otherPage],
  ]) {
    p.on("console", (message) => pageLog.push(`${name} page console.${message.type()}: ${message.text()}`));
    p.on("pageerror", (error) => pageLog.push(`${name} page error: ${error.message}`));
  }
  await page.goto(allowed);
  await otherPage.goto(other);
  ok(`Chromium ${browser.version()} opened a page on ${allowed} and one on ${other}`);

  // a. A JSON body is not a "simple" request: the browser asks first (a preflight), then posts.
  const created = await pageFetch(page, `${api.url}/applications`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ name: "browser" }),
  });
  expectStatus(created, 201, "create an application from the allowed origin");
  const token = json(created, "create an application").token;
  check(typeof token === "string" && token !== "", `the created application has no token: ${created.text}`);
  ok("create an application (a preflighted JSON POST) from the allowed origin");

  // b. Authorization is not a safelisted header either: another preflight.
  const listed = await pageFetch(page, `${api.url}/applications?limit=100`, {
    headers: { Authorization: `Bearer ${ADMIN_KEY}` },
  });
  expectStatus(listed, 200, "list applications with the admin key from the allowed origin");
  const applications = json(listed, "list applications");
  check(
    Array.isArray(applications) && applications.some((a) => a.token === token),
    `the list does not hold the new application: ${listed.text}`,
  );
  check(
    (listed.headers["x-request-id"] ?? "") !== "",
    `the page cannot read X-Request-Id (not exposed?); it reads ${JSON.stringify(listed.headers)}`,
  );
  ok("list applications with the admin key, and read the exposed X-Request-Id");

  // c. A POST with no body and no header of its own is "simple": no preflight, and the answer is readable.
  const app = `${api.url}/applications/${token}`;
  const chat = await pageFetch(page, `${app}/chats`, { method: "POST" });
  expectStatus(chat, 201, "create a chat from the allowed origin");
  check(json(chat, "create a chat").number === 1, `the first chat is not number 1: ${chat.text}`);
  ok("create a chat");

  // d. A page retries a create it did not see answered with the same key: one message, one number.
  const messages = `${app}/chats/1/messages`;
  const key = randomUUID();
  const post = (body) =>
    pageFetch(page, messages, {
      method: "POST",
      headers: { "Content-Type": "application/json", "Idempotency-Key": key },
      body: JSON.stringify({ body }),
    });
  const first = await post("hello from the browser");
  const retry = await post("hello from the browser");
  expectStatus(first, 201, "post a message with an Idempotency-Key");
  expectStatus(retry, 201, "retry it with the same key");
  const number = json(first, "post a message").number;
  check(
    Number.isInteger(number) && json(retry, "retry").number === number,
    `the retry has another number: ${first.text} then ${retry.text}`,
  );
  check(first.headers["idempotent-replayed"] === undefined, "the first answer is marked as replayed");
  check(
    retry.headers["idempotent-replayed"] === "true",
    `the page cannot read Idempotent-Replayed: true on the retry; it reads ${JSON.stringify(retry.headers)}`,
  );
  ok(`a retried create with an Idempotency-Key is created once (message ${number}), marked as replayed`);
  const reused = await post("another body under the same key");
  expectError(reused, 422, "idempotency_key_reused", "the same key for another body");
  ok("the same Idempotency-Key for another body is refused 422 idempotency_key_reused");

  // e. The page follows the chat; node posts as another client would.
  await page.evaluate(
    (url) =>
      new Promise((resolve, reject) => {
        window.received = [];
        window.opens = 0;
        window.errors = 0;
        const source = new EventSource(url);
        window.source = source;
        source.addEventListener("message.created", (event) => {
          const message = JSON.parse(event.data);
          window.received.push({ number: message.number, body: message.body, id: event.lastEventId });
        });
        source.onopen = () => {
          window.opens += 1;
          resolve();
        };
        source.onerror = () => {
          window.errors += 1;
          if (source.readyState === EventSource.CLOSED) reject(new Error("the EventSource failed for good"));
        };
        setTimeout(() => reject(new Error("the EventSource did not open within 10 s")), 10_000);
      }),
    `${app}/chats/1/events`,
  );
  ok("an EventSource on the chat's events opens");

  const createFromNode = async (body) => {
    const response = await nodeFetch(messages, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ body }),
    });
    expectStatus(response, 201, `post "${body}" from node`);
    return json(response, "post from node").number;
  };
  const received = (n) => (state) => state.received.some((m) => m.number === n);
  const live = await createFromNode("live, before the restart");
  await waitInPage(page, streamState, received(live), LIVE_EVENT_TIMEOUT_MS, `no message.created ${live}`);
  ok(`the page's EventSource receives message ${live}, posted by another client`);

  // f. The stream ends with the server; the EventSource reconnects by itself, sending Last-Event-ID.
  await api.stop();
  const noticed = (s) => s.errors > 0;
  await waitInPage(page, streamState, noticed, 10_000, "the EventSource did not see the server go");
  api.start();
  await api.ready();
  const after = await createFromNode("after the restart");
  const { opens: opensWhenPosted } = await page.evaluate(streamState);
  const state = await waitInPage(
    page,
    streamState,
    (s) => received(after)(s) || s.readyState === 2,
    RECONNECT_TIMEOUT_MS,
    `no message.created ${after} after the restart`,
  );
  check(
    state.readyState !== 2,
    `the EventSource gave up instead of reconnecting: ${JSON.stringify(state)} (see ${api.logPath})`,
  );
  const numbers = state.received.map((m) => m.number);
  check(new Set(numbers).size === numbers.length, `a message came twice: ${JSON.stringify(state.received)}`);
  check(
    numbers.indexOf(live) < numbers.indexOf(after),
    `the messages came out of order: ${JSON.stringify(state.received)}`,
  );
  const ids = state.received.map((m) => Number(m.id));
  check(
    ids.every((id, i) => Number.isInteger(id) && (i === 0 || id > ids[i - 1])),
    `the event ids do not rise: ${JSON.stringify(state.received)}`,
  );
  check(
    state.received.find((m) => m.number === after).body === "after the restart",
    `message ${after} came with another body: ${JSON.stringify(state.received)}`,
  );
  // Posted before the reconnection, the message could only come as one the stream had missed.
  const when = opensWhenPosted === 1 ? "posted before it reconnected" : "posted after it reconnected";
  ok(
    `after a restart of the API the EventSource reconnects by itself and receives message ${after} ` +
      `(${when}), none twice, in order`,
  );

  // g. A page of another origin may not read an answer: the browser rejects the fetch.
  const read = await pageFetch(otherPage, app);
  check(
    read.rejected?.startsWith("TypeError"),
    `a read from another origin was not refused by the browser: ${describe(read)}`,
  );
  ok(`a fetch from another origin is rejected by the browser (${read.rejected})`);

  // h. A "simple" POST goes out without a preflight; the browser only hides the answer. The server must
  // not act on it. Were it stored, it would hold the next number, readable at once.
  const next = after + 1;
  const smuggled = await pageFetch(otherPage, messages, {
    method: "POST",
    mode: "no-cors",
    headers: { "Content-Type": "text/plain" },
    body: JSON.stringify({ body: "must not be stored" }),
  });
  check(smuggled.type === "opaque", `the no-cors POST did not resolve opaque: ${JSON.stringify(smuggled)}`);
  const missing = await nodeFetch(`${messages}/${next}`);
  expectError(missing, 404, "not_found", `message ${next} after the no-cors POST from another origin`);
  ok("a no-cors text/plain POST from another origin stores nothing");

  const refused = await nodeFetch(messages, {
    method: "POST",
    headers: { Origin: other, "Content-Type": "text/plain" },
    body: JSON.stringify({ body: "must not be stored" }),
  });
  expectError(refused, 403, "origin_not_allowed", `a POST with Origin: ${other}`);
  check(
    refused.headers["access-control-allow-origin"] === undefined,
    `the refusal allows an origin: ${refused.headers["access-control-allow-origin"]}`,
  );
  ok(`a request with Origin: ${other} is answered 403 origin_not_allowed, allowing no origin`);

  // The same simple POST from the allowed origin is stored, with the number the refused ones would have
  // taken: so nothing above was refused for its Content-Type, and no number was spent on it.
  const simple = await pageFetch(page, messages, {
    method: "POST",
    headers: { "Content-Type": "text/plain" },
    body: JSON.stringify({ body: "a simple POST from the allowed origin" }),
  });
  expectStatus(simple, 201, "the same simple POST from the allowed origin");
  check(
    json(simple, "the simple POST").number === next,
    `the allowed simple POST got another number than ${next}: ${simple.text}`,
  );
  ok(`the same simple POST from the allowed origin is stored, as message ${next}`);

  // i. The preflight a page sends before a keyed JSON POST.
  const preflight = await nodeFetch(messages, {
    method: "OPTIONS",
    headers: {
      Origin: allowed,
      "Access-Control-Request-Method": "POST",
      "Access-Control-Request-Headers": "content-type,idempotency-key",
    },
  });
  expectStatus(preflight, 204, "a preflight from the allowed origin");
  check(
    preflight.headers["access-control-allow-origin"] === allowed,
    `the preflight allows ${preflight.headers["access-control-allow-origin"]}, not ${allowed}`,
  );
  const list = (name) => (preflight.headers[name] ?? "").toLowerCase().split(/\s*,\s*/);
  check(
    list("access-control-allow-headers").includes("idempotency-key"),
    `the preflight does not allow Idempotency-Key: ${preflight.headers["access-control-allow-headers"]}`,
  );
  check(
    list("access-control-allow-methods").includes("post"),
    `the preflight does not allow POST: ${preflight.headers["access-control-allow-methods"]}`,
  );
  ok("a preflight from the allowed origin is answered 204, allowing the origin, POST and Idempotency-Key");
}

const [apiBinary, workDir] = process.argv.slice(2);
if (!apiBinary || !workDir) {
  console.error("usage: node clients/browser/cors.mjs API_BINARY WORK_DIR");
  process.exit(2);
}
let interrupted = false;
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"]) {
  process.once(signal, async () => {
    interrupted = true;
    console.error(`browser: interrupted by ${signal}, cleaning up`);
    await cleanUp();
    process.exit(130);
  });
}

let status = 0;
const overall = deadline(RUN_TIMEOUT_MS, `the run took over ${RUN_TIMEOUT_MS / 1000} s`);
try {
  await Promise.race([run(apiBinary, workDir), overall.promise]);
  console.log("browser: all checks passed");
} catch (error) {
  status = 1;
  // A run cut short by a signal fails in whatever it was doing: that is no finding.
  if (!interrupted) {
    const what = error instanceof CheckFailed ? error.message : (error.stack ?? String(error));
    console.error(`browser: FAILED: ${what}`);
    for (const line of pageLog) console.error(`  ${line}`);
  }
} finally {
  overall.cancel();
  await cleanUp();
}
process.exit(interrupted ? 130 : status);
