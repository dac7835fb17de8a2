"""Replicas of the server on the Kubernetes store: membership, agent holders, leader election.

- ``rules``: the sans-IO rules (a replica alive, the election, who holds an agent);
- ``mirror``: the Leases as the watch gives them (``holder_of``);
- ``kube``: the I/O on coordination.k8s.io/v1 Leases (lightkube, the server's loop);
- ``service``: the wiring into the application (``/status``, readiness, ``REPLICAS_KEY``).

Nothing is imported here: ``kube`` pulls the Kubernetes client (about a second), which a
SQLite server never pays for. docs/ha.md describes the design and its limits.
"""
