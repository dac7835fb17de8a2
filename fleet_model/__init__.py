"""Pure, sans-IO core of the fleet: what the fleet services decide, with no I/O.

The fleet services (registered, hub-managed and elastic clusters) will keep their decisions
here, so they can be tested as synchronous scripts and fuzzed like ``device_models`` and
``tunnel_protocol``:

* cluster records: a registered cluster's name, labels, claims, conditions and lease;
* label selectors (``labels``): parsed and matched the way the API server does; promoted here
  from the kube cache, which imports them from here (its field selectors stay in
  ``edge_agent/kubecache/selectors.py``); ``selectors``: the one parser of Kubernetes
  ``LabelSelector`` objects (matchLabels + matchExpressions) every fleet object uses;
* placement: which clusters a placement selects, spread and weighted;
* elastic (``elastic/``): ResourcePolicy units and NodePool sizing (issue 15).

Rules (import-linter contracts in pyproject.toml enforce the first two):

* imports nothing of ours and does no I/O: no asyncio, aiohttp, sockets, files;
* time is an argument (``now``), never read from a clock; what must happen later is returned
  as a deadline ("wake me at T") for the caller's driver;
* the drivers live elsewhere: the cloud side in ``tunnel_server/fleet/``, the in-cluster agent
  part in ``edge_agent/cluster/``.

See docs/architecture.md, "Where the fleet lives".
"""
