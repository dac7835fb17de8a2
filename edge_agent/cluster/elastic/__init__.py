"""Elastic clusters, the agent side (issue 15): the building blocks that act on the member.

``providers``: what makes and removes a NodePool's nodes (``KwokNodes``: Node objects kwok
plays; ``CommandNodes``: the operator's executable), behind the ``NodeProvider`` protocol the
autoscaler's driver calls. ``process``: running one command bounded in time and output. The
decisions are ``fleet_model.elastic``'s (pure); the CRDs are in
``crds.yaml`` (installed by ``crds``). ``webhook*``, ``policy_controller`` and
``autoscaler_driver`` (with ``drain`` and ``events``) act on the member; ``service.ElasticPart``
wires them into the agent with ``[cluster.elastic]`` (``settings``). docs/elastic.md.
"""
