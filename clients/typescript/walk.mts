// Walks the contract with openapi-fetch over the types openapi-typescript generated from /openapi.json
// (./schema.d.ts, written by scripts/check-openapi.sh). tsc type-checks it first: a document that types a
// path, a parameter, a body or an answer wrongly makes this file fail to compile, and each
// `@ts-expect-error` below proves that a wrong call is refused by the types. Then node runs it.
//
// Usage: node walk.mjs BASE_URL

import createClient from "openapi-fetch";
import type { components, paths } from "./schema.js";

type ErrorCode = components["schemas"]["ErrorCode"];
type Message = components["schemas"]["MessageView"];

// The one Node API used; declared here rather than pulling in all of @types/node.
declare const process: { argv: string[] };
const baseUrl = process.argv[2];
const client = createClient<paths>({ baseUrl });

function check(condition: boolean, what: string): asserts condition {
  if (!condition) throw new Error(`walk.mts: ${what}`);
}

function expectCode(code: ErrorCode | undefined, wanted: ErrorCode, what: string) {
  check(code === wanted, `${what}: code ${code}, wanted ${wanted}`);
}

const created = await client.POST("/applications", {
  body: { name: "typescript walk" },
  params: { header: { "X-Request-Id": "ts-walk" } },
});
check(created.response.status === 201 && created.data !== undefined, "create an application");
check(created.response.headers.get("x-request-id") === "ts-walk", "the request id is echoed");
const token: string = created.data.token;

const chat = await client.POST("/applications/{token}/chats", { params: { path: { token } } });
check(chat.data?.number === 1, "the first chat is number 1");

const once = await client.POST("/applications/{token}/chats", {
  params: { path: { token }, header: { "Idempotency-Key": "ts-walk-once" } },
});
const again = await client.POST("/applications/{token}/chats", {
  params: { path: { token }, header: { "Idempotency-Key": "ts-walk-once" } },
});
check(once.data?.number === 2 && again.data?.number === 2, "a retried create is created once");
check(again.response.headers.get("idempotent-replayed") === "true", "the retry is marked as replayed");

const spare = await client.POST("/applications", { body: { name: "rotated" } });
const rotated = await client.POST("/applications/{token}/token", {
  params: { path: { token: spare.data?.token ?? "" } },
});
check(rotated.response.status === 200 && rotated.data?.token !== spare.data?.token, "rotate a token");

const path = { token, number: 1 };
const posted = await client.POST("/applications/{token}/chats/{number}/messages", {
  params: { path },
  body: { body: "hello from TypeScript" },
});
check(posted.data?.number === 1, "the first message is number 1");

const read = await client.GET("/applications/{token}/chats/{number}/messages/{message}", {
  params: { path: { ...path, message: 1 } },
});
const message: Message | undefined = read.data;
check(message?.body === "hello from TypeScript", "read the message back");

const edited = await client.PUT("/applications/{token}/chats/{number}/messages/{message}", {
  params: { path: { ...path, message: 1 } },
  body: { body: "edited from TypeScript" },
});
check(edited.data?.body === "edited from TypeScript", "edit the message");

// A conditional edit: the tag of the edit above is current, the tag read before it is not.
const current = edited.response.headers.get("etag") ?? "";
const stale = read.response.headers.get("etag") ?? "";
const conditional = await client.PUT("/applications/{token}/chats/{number}/messages/{message}", {
  params: { path: { ...path, message: 1 }, header: { "If-Match": current } },
  body: { body: "edited once more from TypeScript" },
});
check(conditional.response.status === 200, "an edit conditioned on the current tag is made");
const lost = await client.PUT("/applications/{token}/chats/{number}/messages/{message}", {
  params: { path: { ...path, message: 1 }, header: { "If-Match": stale } },
  body: { body: "a lost update" },
});
check(lost.response.status === 412, "an edit conditioned on a stale tag is a 412");
expectCode(lost.error?.error.code, "precondition_failed", "a stale If-Match");
check(lost.response.headers.get("etag") === conditional.response.headers.get("etag"), "a 412 names the current tag");

let found: Message[] = [];
for (let attempt = 0; attempt < 300 && found.length === 0; attempt++) {
  const search = await client.GET("/applications/{token}/chats/{number}/messages/search", {
    params: { path, query: { q: "ypeScr", limit: 10 } },
  });
  found = search.data ?? [];
  if (found.length === 0) await new Promise((resolve) => setTimeout(resolve, 100));
}
check(found.length === 1 && found[0].number === 1, "search finds the message by part of a word");
const across = await client.GET("/applications/{token}/messages/search", {
  params: { path: { token: path.token }, query: { q: "YPESCR", order: "relevance" } },
});
check(across.response.headers.get("search-order") === "relevance", "the answer names its order");
check(across.data?.[0]?.chat_number === path.number, "an application-wide hit names its chat");

const page = await client.GET("/applications/{token}/chats/{number}/messages", {
  params: { path, query: { limit: 1 } },
});
check(page.data?.length === 1, "list a page of messages");

// Newest first: a second message, then the first page of the list in descending order.
await client.POST("/applications/{token}/chats/{number}/messages", { params: { path }, body: { body: "second" } });
const listNewest = () =>
  client.GET("/applications/{token}/chats/{number}/messages", {
    params: { path, query: { order: "desc", limit: 1 } },
  });
let newest = await listNewest();
for (let attempt = 0; attempt < 300 && newest.data?.[0]?.number !== 2; attempt++) {
  await new Promise((resolve) => setTimeout(resolve, 100));
  newest = await listNewest();
}
check(newest.data?.[0]?.number === 2, "the newest message comes first");
check(newest.response.headers.get("link")?.includes("before=2") === true, "the next page is the older one");
check(Number(newest.response.headers.get("chat-last-event-id")) >= 2, "the page says the change it was read at");

const missing = await client.GET("/applications/{token}/chats/{number}", {
  params: { path: { token, number: 99 } },
});
check(missing.response.status === 404, "an unknown chat is a 404");
expectCode(missing.error?.error.code, "not_found", "an unknown chat");

const empty = await client.POST("/applications/{token}/chats/{number}/messages", {
  params: { path },
  body: { body: "" },
});
check(empty.response.status === 422, "an empty body is a 422");
expectCode(empty.error?.error.code, "invalid_field", "an empty body");

const badLimit = await client.GET("/applications/{token}/chats", {
  params: { path: { token }, query: { limit: 0 } },
});
expectCode(badLimit.error?.error.code, "invalid_query", "limit 0");

// A chat's events: an unknown chat is the usual typed error; the stream itself is read as it comes.
const unknownChat = await client.GET("/applications/{token}/chats/{number}/events", {
  params: { path: { token, number: 99 } },
});
check(unknownChat.response.status === 404, "the events of an unknown chat are a 404");
expectCode(unknownChat.error?.error.code, "not_found", "the events of an unknown chat");
const events = await client.GET("/applications/{token}/chats/{number}/events", {
  params: { path, query: { after: 0 } },
  parseAs: "stream",
});
check(
  events.response.headers.get("content-type")?.startsWith("text/event-stream") === true,
  "events come as text/event-stream",
);
check(events.data != null, "the event stream has a body");
const reader = events.data.getReader();
const decoder = new TextDecoder();
let received = "";
while (!received.includes("event: message.created")) {
  const chunk = await reader.read();
  if (chunk.done) break;
  received += decoder.decode(chunk.value, { stream: true });
}
check(received.includes("event: message.created"), "the stream replays the chat's first message");
await reader.cancel();

// A delete: 202 at once, then the message answers 404
const doomed = await client.POST("/applications/{token}/chats/{number}/messages", {
  params: { path },
  body: { body: "short-lived" },
});
check(doomed.response.status === 201 && doomed.data != null, "a message to delete");
const messagePath = { ...path, message: doomed.data!.number };
const deleted = await client.DELETE("/applications/{token}/chats/{number}/messages/{message}", {
  params: { path: messagePath },
});
check(deleted.response.status === 202, "a delete is accepted with 202");
const gone = await client.GET("/applications/{token}/chats/{number}/messages/{message}", {
  params: { path: messagePath },
});
check(gone.response.status === 404, "a deleted message answers 404 at once");

// Calls the types must refuse: each line below fails to compile if the document lets it through.
async function refusedByTheTypes() {
  // @ts-expect-error a message is posted with `body`, not an application's `name`
  await client.POST("/applications/{token}/chats/{number}/messages", { params: { path }, body: { name: "x" } });
  // @ts-expect-error a chat's number is a number, not text
  await client.GET("/applications/{token}/chats/{number}", { params: { path: { token, number: "1" } } });
  // @ts-expect-error search needs q
  await client.GET("/applications/{token}/chats/{number}/messages/search", { params: { path } });
  // @ts-expect-error deleting a message needs its path
  await client.DELETE("/applications/{token}/chats/{number}/messages/{message}", {});
  // @ts-expect-error an error code outside the documented list
  expectCode(undefined, "teapot", "never called");
  // @ts-expect-error creating an application answers an application, which has no `body`
  (created.data as components["schemas"]["ApplicationView"]).body;
}
void refusedByTheTypes;

console.log("walk.mts: the TypeScript client went through the contract");
