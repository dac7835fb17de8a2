"""Settings of the elastic part of cluster mode (``[cluster.elastic]``).

Each field says its unit and why its default. Flat scalars only, so the agent's config loader
checks each key's type against its default (``edge_agent.config``). docs/elastic.md lists them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class ElasticSettings:
    """``[cluster.elastic]``: the ResourcePolicy webhook and controller, the NodePool autoscaler."""

    enabled: bool = False
    """Run the elastic part at all. Off by default: it installs CRDs and a mutating webhook in
    the member cluster, which an operator should ask for."""

    install_crds: bool = True
    """Create or update the NodePool and ResourcePolicy CRDs at start (server-side apply), so
    ``kubectl apply`` of either kind works in the member cluster without a separate step."""

    webhook_listen: str = "0.0.0.0:9443"
    """``host:port`` the admission webhook serves HTTPS on (the API server calls it)."""

    webhook_url: str = ""
    """``https://...`` URL the API server calls, for an agent outside the member cluster (tests,
    an agent on a gateway machine). Empty: the webhook is reached through ``webhook_service``."""

    webhook_service: str = "edgefleet-system/cluster-agent-webhook"
    """``namespace/name`` of the Service in front of the agent's webhook port (the manifests in
    packaging/kubernetes/cluster-agent/ create it); used when ``webhook_url`` is empty."""

    webhook_service_port: int = 443
    """Port of ``webhook_service`` the API server dials (the Service maps it to the listener)."""

    webhook_name: str = "edgefleet-elastic"
    """Name of the MutatingWebhookConfiguration the agent creates and keeps current."""

    webhook_timeout: int = 2
    """Seconds (``timeoutSeconds``, 1-30) the API server waits for the webhook before it admits
    the pod unchanged (``failurePolicy: Ignore``): a pod create never waits long on the agent."""

    certificate_days: int = 365
    """Days the webhook's self-made serving certificate (and its CA) are valid."""

    certificate_renew_days: int = 30
    """Days before expiry the agent makes a new CA and certificate and updates the caBundle."""

    hold: bool = True
    """Admit matching pods at the scheduling gate and let the policy controller release them in
    unit order (exact ``max`` under bursts). False: the webhook decides alone at creation, from
    its cache (faster, but a burst can overfill a unit with ``max``; docs/elastic.md)."""

    autoscaler: bool = True
    """Run the NodePool autoscaler (with ``enabled``); off for a cluster that only wants the
    ResourcePolicy ordering over nodes it manages itself."""
