"""A reference mutating webhook for the elastic benchmark: the least a webhook can do.

``python elastic_noop_webhook.py --port P --cert C --key K`` serves ``POST /mutate`` over
HTTPS with aiohttp (the agent's own stack) in a process of its own (as the agent is) and answers
every AdmissionReview ``allowed: true`` with a one-operation JSON patch (one annotation), so
the API server does what it does for the agent's answer: call, decode, apply a patch. What a
pod create costs with this webhook, next to the agent's, tells the price of any webhook on the
machine from the price of the agent's decision.

Rules: only AdmissionReview v1 bodies of at most 3 MiB; anything else is a 400. It runs until
killed (the bench stops it).
"""

from __future__ import annotations

import argparse
import base64
import json
import ssl

from aiohttp import web

MAX_BODY = 3 * 1024 * 1024
PATCH = base64.b64encode(
    json.dumps(
        [{"op": "add", "path": "/metadata/annotations", "value": {"bench.edgefleet.io/noop": "1"}}]
    ).encode()
).decode()


async def mutate(request: web.Request) -> web.Response:
    try:
        review = json.loads(await request.read())
        uid = review["request"]["uid"]
    except (ValueError, KeyError, TypeError):
        return web.Response(status=400, text="not an AdmissionReview\n")
    if not isinstance(uid, str):
        return web.Response(status=400, text="request.uid is not a string\n")
    return web.json_response(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": {"uid": uid, "allowed": True, "patchType": "JSONPatch", "patch": PATCH},
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post("/mutate", mutate)
    web.run_app(app, host="127.0.0.1", port=args.port, ssl_context=context, access_log=None)


if __name__ == "__main__":
    main()
