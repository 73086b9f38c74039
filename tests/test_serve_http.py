"""End to end over real HTTP: a real wasmhost app on 127.0.0.1 serving real guests."""
from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

pytestmark = pytest.mark.asyncio


async def test_demo_component_is_served_without_a_component(serve) -> None:
    client = await serve(None)
    resp = await client.get("/anything")
    assert resp.status == 200
    assert resp.headers["content-type"] == "text/plain; charset=utf-8"
    assert "Hello from wasmhost" in await resp.text()


async def test_wat_hello_guest(serve, guest) -> None:
    client = await serve(guest("wat-hello"))
    for _ in range(3):
        resp = await client.get("/")
        assert resp.status == 200
        assert (await resp.text()).startswith("Hello from wasmhost!")


async def test_hello_sees_method_and_path_with_query(serve, guest) -> None:
    client = await serve(guest("hello"))
    resp = await client.request("DELETE", "/x/y?z=1&w=%20")
    assert resp.status == 200
    assert resp.headers["x-path"] == "DELETE /x/y?z=1&w=%20"
    assert await resp.text() == "Hello from wasmhost\n"


async def test_request_line_and_authority_reach_the_guest(serve, guest) -> None:
    client = await serve(guest("echo"))
    resp = await client.get("/info?a=b", headers={"host": "example.test:1234"})
    info = await resp.json()
    assert info == {"method": "GET", "scheme": "http", "authority": "example.test:1234",
                    "path_with_query": "/info?a=b"}
    resp = await client.request("PURGE", "/info")
    assert (await resp.json())["method"] == "PURGE"


async def test_compressed_request_body_reaches_the_guest_as_sent(serve, guest) -> None:
    client = await serve(guest("echo"))
    sent = gzip.compress(b"hello gzip" * 100)
    resp = await client.post("/", data=sent, headers={"Content-Encoding": "gzip"})
    assert resp.status == 200
    assert await resp.read() == sent  # not decompressed on the way in


async def test_request_without_host_has_no_authority(serve, guest) -> None:
    client = await serve(guest("echo"))
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(b"GET /info HTTP/1.0\r\n\r\n")  # HTTP/1.0 needs no Host header
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200"), head
    assert json.loads(body)["authority"] is None


async def test_repeated_and_non_utf8_headers_reach_the_guest(serve, guest) -> None:
    client = await serve(guest("echo"))
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    # A raw request: the value bytes are latin-1 0xE9, not valid UTF-8.
    writer.write(b"GET /headers HTTP/1.1\r\nhost: x\r\nx-a: 1\r\nx-a: 2\r\nx-bytes: caf\xe9\r\n"
                 b"connection: close\r\n\r\n")
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    seen = json.loads(body)
    assert seen["x-a"] == ["1", "2"]
    assert seen["x-bytes"] == ["caf\xe9"]  # the guest decodes values as latin-1
    assert "host" not in seen  # hidden from guests, as wasmtime does


async def test_header_flag_adds_and_replaces_request_headers(serve, guest) -> None:
    client = await serve(guest("echo"), header=["x-added: yes", "user-agent: wasmhost-test"])
    seen = await (await client.get("/headers", headers={"user-agent": "original"})).json()
    assert seen["x-added"] == ["yes"]
    assert seen["user-agent"] == ["wasmhost-test"]


@pytest.mark.parametrize("size", [0, 1, 100 * 1024, 8 * 1024 * 1024])
async def test_bodies_stream_back(serve, guest, size: int) -> None:
    client = await serve(guest("echo"))
    payload = os.urandom(size)
    resp = await client.post("/", data=payload, headers={"content-type": "application/x-test"})
    assert resp.status == 200
    assert resp.headers["content-type"] == "application/x-test"
    body = await resp.read()
    assert len(body) == size
    assert hashlib.sha256(body).digest() == hashlib.sha256(payload).digest()


async def test_chunked_upload_is_echoed_as_it_arrives(serve, guest) -> None:
    client = await serve(guest("echo"))
    first_seen = asyncio.Event()

    async def upload():
        yield b"first chunk\n"
        # The second chunk is only sent once the first came back: proves streaming.
        await asyncio.wait_for(first_seen.wait(), 10)
        yield b"second chunk\n"

    resp = await client.post("/", data=upload())
    assert resp.status == 200
    got = await resp.content.readuntil(b"\n")
    assert got == b"first chunk\n"
    first_seen.set()
    assert await resp.content.read() == b"second chunk\n"


@pytest.mark.parametrize("status", [201, 404, 418, 503])
async def test_status_codes_pass_through(serve, guest, status: int) -> None:
    client = await serve(guest("echo"))
    resp = await client.post(f"/status/{status}", data=b"x")
    assert resp.status == status
    assert await resp.read() == b"x"


async def test_no_content_has_no_body(serve, guest) -> None:
    client = await serve(guest("echo"))
    resp = await client.post("/status/204", data=b"ignored")
    assert resp.status == 204
    assert await resp.read() == b""


async def test_declared_content_length_goes_out(serve, guest) -> None:
    client = await serve(guest("echo"))
    resp = await client.get("/headers")
    body = await resp.read()
    assert resp.headers["content-length"] == str(len(body))
    assert "transfer-encoding" not in resp.headers


async def test_body_finished_before_the_head_goes_out_gets_a_length(serve, guest) -> None:
    client = await serve(guest("hello"))
    resp = await client.get("/")
    assert resp.headers.get("content-length") == str(len(await resp.read()))
    assert "transfer-encoding" not in resp.headers


async def test_body_still_streaming_when_the_head_goes_out_is_chunked(serve, guest) -> None:
    # echo streams the request body back while it arrives: its response head
    # goes out before the body is complete, so the length is unknown.
    client = await serve(guest("echo"))

    async def slow_body():
        yield b"first "
        await asyncio.sleep(0.2)
        yield b"second"

    resp = await client.post("/", data=slow_body())
    assert resp.headers.get("transfer-encoding") == "chunked"
    assert await resp.read() == b"first second"


async def test_trailers_are_sent_on_chunked_responses(serve, guest) -> None:
    client = await serve(guest("echo"))
    host, port = client.server.host, client.server.port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /trailers HTTP/1.1\r\nhost: x\r\nte: trailers\r\nconnection: close\r\n\r\n")
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    expected = hashlib.sha256(b"trailers follow\n").hexdigest()
    assert body.endswith(b"0\r\nx-checksum: sha256:" + expected.encode() + b"\r\n\r\n")


async def test_trap_before_response_is_500_and_server_keeps_serving(serve, guest) -> None:
    client = await serve(guest("misbehave"))
    resp = await client.get("/trap")
    assert resp.status == 500
    for _ in range(2):
        ok = await client.get("/")
        assert ok.status == 200
        assert await ok.text() == "ok\n"


async def test_trap_after_head_aborts_the_connection(serve, guest) -> None:
    client = await serve(guest("misbehave"))
    resp = await client.get("/late")
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    assert (await client.get("/")).status == 200


async def test_outgoing_request_refused_unless_allowed(serve, guest, aiohttp_server) -> None:
    async def upstream_handler(request: web.Request) -> web.Response:
        return web.Response(body=f"upstream saw {request.path}".encode(), headers={"content-type": "text/x-up"})

    upstream_app = web.Application()
    upstream_app.router.add_get("/{tail:.*}", upstream_handler)
    upstream = await aiohttp_server(upstream_app, host="127.0.0.1")
    target = f"http://127.0.0.1:{upstream.port}/data"

    denied = await serve(guest("outgoing"))
    resp = await denied.get("/", headers={"x-target": target})
    assert resp.status == 502
    assert "HttpRequestDenied" in await resp.text()

    allowed = await serve(guest("outgoing"), allow_outgoing=[f"127.0.0.1:{upstream.port}"])
    resp = await allowed.get("/", headers={"x-target": target})
    assert resp.status == 200
    assert await resp.text() == "upstream saw /data"
    assert resp.headers["content-type"] == "text/x-up"


async def test_counter_shows_instance_reuse(serve, guest) -> None:
    client = await serve(guest("counter"))
    counts = [int(await (await client.get("/")).text()) for _ in range(12)]
    # Each instance counts 1, 2, 3, ...; a request arriving while the previous
    # one's guest call is still returning may go to a second instance, so the
    # counts are an interleaving of such runs.
    last_counts: list[int] = []  # the latest count of every instance seen
    for count in counts:
        if count == 1:
            last_counts.append(1)
        else:
            assert count - 1 in last_counts, counts
            last_counts[last_counts.index(count - 1)] = count
    assert len(last_counts) <= 3 and max(counts) >= 4, counts


async def test_reuse_count_one_gives_fresh_instances(serve, guest) -> None:
    client = await serve(guest("counter"), max_instance_reuse_count=1)
    counts = [int(await (await client.get("/")).text()) for _ in range(3)]
    assert counts == [1, 1, 1]


async def test_apps_run_side_by_side_and_as_sub_apps(guest, aiohttp_client) -> None:
    from tests.conftest import CACHE_DIR
    from wasmhost.server import create_app
    from wasmhost.settings import Settings

    root = web.Application()
    root.add_subapp("/hello/", create_app(Settings(component=guest("hello"), cache_dir=CACHE_DIR)))
    root.add_subapp("/count/", create_app(Settings(component=guest("counter"), cache_dir=CACHE_DIR, max_instances=1)))
    async def plain(request: web.Request) -> web.Response:
        return web.Response(text="plain route")

    root.router.add_get("/hellothere", plain)
    client = await aiohttp_client(root)
    hello = await client.get("/hello/x?q=1")
    assert (await hello.text()) == "Hello from wasmhost\n"
    assert hello.headers["x-path"] == "GET /hello/x?q=1"
    assert (await (await client.get("/count/")).text()) == "1\n"
    assert (await (await client.get("/count")).text()) == "2\n"
    # The prefix ends at a path segment: a sibling route is not swallowed, an unknown one is 404.
    assert (await (await client.get("/hellothere")).text()) == "plain route"
    assert (await client.get("/hellox")).status == 404


async def test_demo_text_ships_in_the_package() -> None:
    from importlib import resources

    text = resources.files("wasmhost").joinpath("demo.wat").read_text()
    assert text.lstrip().startswith(";;") or "(component" in text
    assert "wasi:http/incoming-handler@0.2" in text
    assert Path(__file__).parent.parent.joinpath("wasmhost", "demo.wat").exists()


async def test_user_written_guest_with_env(serve, guest) -> None:
    client = await serve(guest("todo"), env=["GREETING=hello there", "WASMHOST_TEST_UNSET_VAR"],
                         max_instances=1)
    assert await (await client.get("/env")).json() == {"GREETING": "hello there"}
    created = await client.post("/todos", json={"title": "ship it"})
    assert created.status == 201
    item = await created.json()
    # One instance (max_instances=1) keeps its module state across requests.
    fetched = await client.get(f"/todos/{item['id']}")
    assert await fetched.json() == item
    assert (await client.post("/todos", data=b"{")).status == 400
    assert (await client.delete(f"/todos/{item['id']}")).status == 204
    assert (await (await client.get("/todos")).json())["count"] == 0


@pytest.mark.parametrize("version", ["0.2.0", "0.2.3", "0.2.6", "0.2.12"])
async def test_any_wasi_0_2_version_links(serve, tmp_path, version: str) -> None:
    from importlib import resources

    text = resources.files("wasmhost").joinpath("demo.wat").read_text()
    component = tmp_path / f"demo-{version}.wat"
    component.write_text(text.replace("@0.2.12", f"@{version}"))
    assert f"wasi:http/types@{version}" in component.read_text()
    client = await serve(component)
    resp = await client.get("/")
    assert resp.status == 200
    assert "Hello from wasmhost" in await resp.text()


async def test_head_response_has_no_body(serve, guest) -> None:
    client = await serve(guest("hello"))
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    # Two requests on one connection: a body after the HEAD head would corrupt the second.
    writer.write(b"HEAD / HTTP/1.1\r\nhost: x\r\n\r\nGET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    first, _, rest = raw.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200") and b"x-path: HEAD /" in first
    assert rest.startswith(b"HTTP/1.1 200"), rest[:80]
    assert rest.endswith(b"Hello from wasmhost\n0\r\n\r\n") or b"Hello from wasmhost\n" in rest


async def test_request_body_limit(serve, guest) -> None:
    client = await serve(guest("echo"), max_request_body=1000)
    resp = await client.post("/", data=b"x" * 1001)
    assert resp.status == 413
    ok = await client.post("/", data=b"y" * 1000)
    assert ok.status == 200 and await ok.read() == b"y" * 1000

    async def too_much():
        for _ in range(4):
            yield b"z" * 500

    cut = await client.post("/", data=too_much())  # chunked: the limit hits mid-stream
    with pytest.raises(aiohttp.ClientPayloadError):
        await cut.read()


@pytest.mark.parametrize("path", ["/short", "/long"])
async def test_broken_content_length_cuts_the_connection(serve, guest, path: str) -> None:
    client = await serve(guest("misbehave"))
    resp = await client.get(path)
    assert resp.status == 200 and resp.headers["content-length"] == "10"
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    assert (await client.get("/")).status == 200


async def test_client_disconnect_mid_body_leaves_the_server_healthy(serve, guest) -> None:
    client = await serve(guest("echo"), max_instances=1)
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    # Promise 10 MB, send 64 KiB, read a little of the echo, then vanish.
    writer.write(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 10000000\r\n\r\n" + b"a" * 65536)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200")
    writer.close()
    # The guest's instance is released and the next request is served normally.
    for _ in range(3):
        resp = await client.post("/", data=b"after")
        assert resp.status == 200 and await resp.read() == b"after"
