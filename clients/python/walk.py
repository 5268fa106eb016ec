"""Walks the whole contract with a client generated from /openapi.json by openapi-python-client.

Only the generated package is used to call the API: if the document mistypes an operation, a
parameter, a body or an error, a call here fails to build, sends the wrong request or fails to parse.
The one exception is the 408, which no well-behaved client provokes: it is read off a raw socket and
parsed with the generated ErrorBody model.

Usage: python3 walk.py BASE_URL ADMIN_KEY  (the generated package `chatsys_client` on PYTHONPATH; the
server started with that admin key and a body timeout of a second or less).
"""

import json
import socket
import sys
import time
from urllib.parse import parse_qs, urlsplit

from chatsys_client import AuthenticatedClient, Client
from chatsys_client.api.applications import (
    applications_create,
    applications_delete,
    applications_list,
    applications_read,
    applications_rename,
    applications_rotate_token,
)
from chatsys_client.api.chats import chats_create, chats_delete, chats_events, chats_list, chats_read
from chatsys_client.api.messages import (
    messages_create,
    messages_delete,
    messages_edit,
    messages_list,
    messages_read,
    messages_search,
    messages_search_application,
)
from chatsys_client.api.operations import healthz, metrics, openapi, readyz
from chatsys_client.models import (
    ApplicationName,
    ApplicationView,
    ChatView,
    ErrorBody,
    ErrorCode,
    MessageBody,
    MessageView,
    NewChat,
    ReadinessStatus,
)
from chatsys_client.types import UNSET

BASE_URL, ADMIN_KEY = sys.argv[1], sys.argv[2]
client = Client(base_url=BASE_URL, raise_on_unexpected_status=True)
admin = AuthenticatedClient(base_url=BASE_URL, token=ADMIN_KEY, raise_on_unexpected_status=True)


def expect(response, status, model):
    """The response has this status and its body parsed into this generated model."""
    assert response.status_code == status, (response.status_code, response.content[:300])
    parsed = response.parsed
    if isinstance(parsed, list):
        assert all(isinstance(item, model) for item in parsed), parsed
    else:
        assert isinstance(parsed, model), (type(parsed), response.content[:300])
    return parsed


def expect_error(response, status, code):
    """An error answer, parsed into ErrorBody, with its code as the generated enum."""
    body = expect(response, status, ErrorBody)
    assert body.error.code == code, (body.error.code, body.error.message)
    assert response.headers.get("x-request-id"), "no X-Request-Id"
    return body


def link_cursor(response, rel):
    """The query of the Link header's `rel` page (`next` or `prev`), or None when there is none."""
    for part in (response.headers.get("link") or "").split(","):
        target, _, params = part.partition(";")
        if f'rel="{rel}"' in params:
            return parse_qs(urlsplit(target.strip("<> ")).query)
    return None


def next_after(response):
    """The `after` of the Link header's next page, or None on the last page."""
    query = link_cursor(response, "next")
    return None if query is None else query["after"][0]


def walk(call, **kwargs):
    """Every item of a list, page by page, following Link."""
    items, after, pages = [], UNSET, 0
    while True:
        response = call(after=after, **kwargs)
        items += expect(response, 200, object)
        pages += 1
        after = next_after(response)
        if after is None:
            return items, pages


def eventually(check, what):
    """Lists and search show what the worker has stored, a moment after it was accepted."""
    deadline = time.monotonic() + 30
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.1)


# Operations
assert expect(healthz.sync_detailed(client=client), 200, object).status == "ok"
assert expect(readyz.sync_detailed(client=client), 200, object).status in (
    ReadinessStatus.READY,
    ReadinessStatus.DEGRADED,
)
assert b"http_requests_total" in metrics.sync_detailed(client=client).content
assert openapi.sync_detailed(client=client).status_code == 200

# Applications: create, read, rename, list (with the admin key) page by page
created = applications_create.sync_detailed(
    client=client, body=ApplicationName(name="walk"), x_request_id="walk-create"
)
application = expect(created, 201, ApplicationView)
assert created.headers["x-request-id"] == "walk-create"
assert created.headers["location"] == f"/applications/{application.token}"
token = application.token
assert expect(applications_read.sync_detailed(token, client=client), 200, ApplicationView).name == "walk"
renamed = applications_rename.sync_detailed(token, client=client, body=ApplicationName(name="walked"))
assert expect(renamed, 200, ApplicationView).name == "walked"
tokens = [token] + [
    expect(applications_create.sync_detailed(client=client, body=ApplicationName(name=f"walk {i}")), 201, ApplicationView).token
    for i in range(2)
]
everyone, pages = walk(lambda **kw: applications_list.sync_detailed(client=admin, limit=1, **kw))
assert set(tokens) <= {a.token for a in everyone}, "a created application is missing from the list"
assert pages >= 3

# A create retried with its Idempotency-Key gets the first answer; a replaced token names nothing
once = [
    applications_create.sync_detailed(client=client, body=ApplicationName(name="once"), idempotency_key="walk-once")
    for _ in range(2)
]
assert expect(once[0], 201, ApplicationView).token == expect(once[1], 201, ApplicationView).token
assert once[1].headers["idempotent-replayed"] == "true"
expect_error(
    applications_create.sync_detailed(client=client, body=ApplicationName(name="other"), idempotency_key="walk-once"),
    422,
    ErrorCode.IDEMPOTENCY_KEY_REUSED,
)
rotated = expect(applications_rotate_token.sync_detailed(once[0].parsed.token, client=client), 200, ApplicationView)
assert rotated.token != once[0].parsed.token and rotated.name == "once"
expect_error(applications_read.sync_detailed(once[0].parsed.token, client=client), 404, ErrorCode.NOT_FOUND)

# Chats: with no body and with {}, read, list page by page
first = expect(chats_create.sync_detailed(token, client=client), 201, ChatView)
second = expect(chats_create.sync_detailed(token, client=client, body=NewChat()), 201, ChatView)
assert (first.number, second.number) == (1, 2)
assert expect(chats_read.sync_detailed(token, 1, client=client), 200, ChatView).messages_count == 0
chats = eventually(
    lambda: (lambda found: found if len(found[0]) == 2 else None)(
        walk(lambda **kw: chats_list.sync_detailed(token, client=client, limit=1, **kw))
    ),
    "both chats listed",
)
assert [c.number for c in chats[0]] == [1, 2] and chats[1] >= 2

# Messages: post, read, edit, list page by page, search page by page
for i in range(1, 6):
    posted = messages_create.sync_detailed(token, 1, client=client, body=MessageBody(body=f"hello walker {i}"))
    assert expect(posted, 201, MessageView).number == i
    assert posted.headers["location"] == f"/applications/{token}/chats/1/messages/{i}"
assert expect(messages_read.sync_detailed(token, 1, 3, client=client), 200, MessageView).body == "hello walker 3"
edited = messages_edit.sync_detailed(token, 1, 3, client=client, body=MessageBody(body="edited, still a WALKER"))
assert expect(edited, 200, MessageView).body == "edited, still a WALKER"
messages = eventually(
    lambda: (lambda found: found if len(found[0]) == 5 else None)(
        walk(lambda **kw: messages_list.sync_detailed(token, 1, client=client, limit=2, **kw))
    ),
    "five messages listed",
)
assert [m.number for m in messages[0]] == [1, 2, 3, 4, 5] and messages[1] >= 3
# Newest first: pages lead down with `before`, and back up with `prev`
newest = messages_list.sync_detailed(token, 1, client=client, order="desc", limit=2)
assert [m.number for m in expect(newest, 200, MessageView)] == [5, 4]
older = link_cursor(newest, "next")
assert older["order"] == ["desc"] and older["before"] == ["4"], older
page2 = messages_list.sync_detailed(token, 1, client=client, order="desc", limit=2, before=int(older["before"][0]))
assert [m.number for m in expect(page2, 200, MessageView)] == [3, 2]
back = link_cursor(page2, "prev")
page1 = messages_list.sync_detailed(token, 1, client=client, order="desc", limit=2, after=int(back["after"][0]))
assert [m.number for m in expect(page1, 200, MessageView)] == [5, 4]
assert int(newest.headers["chat-last-event-id"]) >= 5, "the change the page was read at"

# A conditional edit: 200 with the next tag, then 412 with the current one for the stale tag
read = messages_read.sync_detailed(token, 1, 2, client=client)
tag = read.headers["etag"]
unchanged = messages_read.sync_detailed(token, 1, 2, client=client, if_none_match=tag)
assert unchanged.status_code == 304, unchanged.status_code
won = messages_edit.sync_detailed(token, 1, 2, client=client, body=MessageBody(body="hello walker 2, once"), if_match=tag)
assert expect(won, 200, MessageView).body == "hello walker 2, once"
lost = messages_edit.sync_detailed(token, 1, 2, client=client, body=MessageBody(body="lost update"), if_match=tag)
expect_error(lost, 412, ErrorCode.PRECONDITION_FAILED)
assert lost.headers["etag"] == won.headers["etag"]

hits = eventually(
    lambda: (lambda found: found if [m.number for m in found] == [5, 4, 3, 2, 1] else None)(
        walk(lambda **kw: messages_search.sync_detailed(token, 1, client=client, q="walker", limit=2, **kw))[0]
    ),
    "five messages found by a part of a word, newest first, the edited one by its new text",
)
assert hits[2].body == "edited, still a WALKER"
both = messages_search_application.sync_detailed(token, client=client, q='WALKER "still a"')
assert both.headers["search-order"] == "newest"
assert [(m.chat_number, m.number) for m in expect(both, 200, object)] == [(1, 3)], both.content
assert expect(chats_read.sync_detailed(token, 1, client=client), 200, ChatView).messages_count == 5

# A chat's events, streamed from its first change (the generated function reads a response whole, so the
# stream is read with the generated client's own HTTP client)
with client.get_httpx_client().stream("GET", f"/applications/{token}/chats/1/events", params={"after": 0}) as stream:
    assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
    streamed = []
    for line in stream.iter_lines():
        if line.startswith("data: "):
            streamed.append(MessageView.from_dict(json.loads(line[len("data: "):])))
        if len(streamed) == 5:
            break
# Each message once, as it is now, at the place of its latest change (message 3 comes after 4 and 5
# unless its edit was stored in the same batch as its creation).
assert sorted(m.number for m in streamed) == [1, 2, 3, 4, 5], streamed
assert {m.number: m.body for m in streamed}[3] == "edited, still a WALKER", "missed changes come as they are now"

# Deletes: a message, then its chat; each answered 202 and gone at once
doomed_chat = expect(chats_create.sync_detailed(token, client=client), 201, ChatView).number
doomed = expect(
    messages_create.sync_detailed(token, doomed_chat, client=client, body=MessageBody(body="short-lived")), 201, MessageView
).number
assert messages_delete.sync_detailed(token, doomed_chat, doomed, client=client).status_code == 202
expect_error(messages_read.sync_detailed(token, doomed_chat, doomed, client=client), 404, ErrorCode.NOT_FOUND)
expect_error(messages_delete.sync_detailed(token, doomed_chat, doomed, client=client), 404, ErrorCode.NOT_FOUND)
assert chats_delete.sync_detailed(token, doomed_chat, client=client).status_code == 202
expect_error(chats_read.sync_detailed(token, doomed_chat, client=client), 404, ErrorCode.NOT_FOUND)

# Every error a client can provoke, parsed into the generated ErrorBody with its ErrorCode
expect_error(chats_list.sync_detailed(token, client=client, limit=0), 400, ErrorCode.INVALID_QUERY)
expect_error(messages_search.sync_detailed(token, 1, client=client, q=" "), 400, ErrorCode.INVALID_QUERY)
expect_error(
    applications_list.sync_detailed(client=AuthenticatedClient(base_url=BASE_URL, token="wrong")),
    401,
    ErrorCode.UNAUTHORIZED,
)
expect_error(applications_read.sync_detailed("no-such-token", client=client), 404, ErrorCode.NOT_FOUND)
expect_error(chats_read.sync_detailed(token, 99, client=client), 404, ErrorCode.NOT_FOUND)
expect_error(chats_events.sync_detailed(token, 99, client=client), 404, ErrorCode.NOT_FOUND)
expect_error(chats_events.sync_detailed(token, 1, client=client, last_event_id="x"), 400, ErrorCode.INVALID_QUERY)
expect_error(messages_read.sync_detailed(token, 1, 99, client=client), 404, ErrorCode.NOT_FOUND)
expect_error(
    messages_create.sync_detailed(token, 1, client=client, body=MessageBody(body="x" * (2 * 1024 * 1024))),
    413,
    ErrorCode.PAYLOAD_TOO_LARGE,
)
expect_error(messages_create.sync_detailed(token, 1, client=client, body=MessageBody(body="")), 422, ErrorCode.INVALID_FIELD)
# Within maxLength in characters, over the limit in bytes: the document says so in x-max-bytes.
expect_error(
    messages_edit.sync_detailed(token, 1, 1, client=client, body=MessageBody(body="é" * 40_000)),
    422,
    ErrorCode.INVALID_FIELD,
)
expect_error(
    applications_create.sync_detailed(client=client, body=ApplicationName(name="\u200b")),
    422,
    ErrorCode.INVALID_FIELD,
)

# An application deleted with the admin key: its token names nothing from then on
short_lived = expect(applications_create.sync_detailed(client=client, body=ApplicationName(name="short-lived")), 201, ApplicationView).token
expect_error(applications_delete.sync_detailed(short_lived, client=client), 401, ErrorCode.UNAUTHORIZED)
assert applications_delete.sync_detailed(short_lived, client=admin).status_code == 202
expect_error(applications_read.sync_detailed(short_lived, client=client), 404, ErrorCode.NOT_FOUND)

# 408: a body announced and never sent
host, port = urlsplit(BASE_URL).hostname, urlsplit(BASE_URL).port
with socket.create_connection((host, port), timeout=30) as stalled:
    stalled.sendall(
        f"POST /applications HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        "Content-Length: 100\r\n\r\n{".encode()
    )
    answer = b""
    while chunk := stalled.recv(65536):
        answer += chunk
head, _, body = answer.partition(b"\r\n\r\n")
assert head.startswith(b"HTTP/1.1 408"), head
assert ErrorBody.from_dict(json.loads(body)).error.code == ErrorCode.TIMEOUT

print("walk: every operation and every provocable error went through the generated Python client")
