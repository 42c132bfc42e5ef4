"""Answers sent before the request's body is read end their connection cleanly.

A route may answer before its body has arrived (a 401, a 404, a 413, a page that
ignores a body). HTTP/1.1 cannot carry another request on that connection, so
hypercorn closes it once the answer is out. But quart-trio cancels the request
as soon as its body reader sees the stream end, which happens inside that very
last send: the close was cancelled half-way, the socket stayed open, the client
waited for an answer to its next request forever and the server kept the socket
(CLOSE-WAIT, one file descriptor per such request, no login needed). The same
cancellation hit every answer of the Quart app on a connection kept alive: the
idle timer hypercorn starts in that last send never ran, so an idle client held
its connection for good. That last send is shielded.
"""

from __future__ import annotations

import trio

from mallard.api.ingest import ASGIApp, Message, Receive, Scope, Send

CLOSE = (b"connection", b"close")


def _declares_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


def finish_early_answers(app: ASGIApp) -> ASGIApp:
    """``app`` whose last send cannot be cut short, and that says ``connection: close``
    when it starts answering before the whole body was received."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        body_received = not _declares_body(scope)

        async def tracking_receive() -> Message:
            nonlocal body_received
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_received = True
            return message

        async def finishing_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                if not body_received:
                    message = {**message, "headers": [*message.get("headers", ()), CLOSE]}
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                # the last one: hypercorn closes the connection, or readies it for the
                # next request (and its idle timeout), inside it
                with trio.CancelScope(shield=True):
                    await send(message)
                return
            await send(message)

        await app(scope, tracking_receive, finishing_send)

    return wrapped
