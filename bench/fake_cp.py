"""A fake Vast control plane for the side-by-side benchmark: serves /pubkey/, records reports.

GET /pubkey/             PEM public key (the driver signs grants with the matching private key)
POST /worker_status/     recorded; the first report with loadtime > 0 per worker url is timestamped
POST /delete_requests/   counted
GET /stats               {"ready_at": {url: epoch}, "statuses": n, "finished": n}
"""

import sys
import time

from aiohttp import web


def main() -> None:
    port = int(sys.argv[1])
    pem = open(sys.argv[2]).read()
    ready_at: dict = {}
    counts = {"statuses": 0, "finished": 0}

    async def pubkey(_req: web.Request) -> web.Response:
        return web.Response(text=pem)

    async def status(req: web.Request) -> web.Response:
        body = await req.json()
        counts["statuses"] += 1
        url = body.get("url", "")
        if body.get("loadtime", 0) > 0 and not body.get("error_msg") and url not in ready_at:
            ready_at[url] = time.time()
        return web.json_response({"ok": True})

    async def delete(req: web.Request) -> web.Response:
        body = await req.json()
        counts["finished"] += len(body.get("requests", body.get("request_idxs", [])))
        return web.json_response({"ok": True})

    async def stats(_req: web.Request) -> web.Response:
        return web.json_response({"ready_at": ready_at, **counts})

    async def reset(req: web.Request) -> web.Response:
        url = (await req.json()).get("url")
        ready_at.pop(url, None)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/pubkey/", pubkey)
    app.router.add_post("/worker_status/", status)
    app.router.add_post("/delete_requests/", delete)
    app.router.add_get("/stats", stats)
    app.router.add_post("/reset", reset)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
