"""The hub of the hub-managed fleet (issue 14): fleet objects, their API, and their drivers.

* ``store`` / ``store_sqlite``: the fleet objects (``fleet.edgefleet.io/v1alpha1`` documents)
  behind one interface, SQLite (``<data>/fleet.db``) by default;
* ``api`` / ``openapi``: ``/api/v1/fleet/{plural}[/{name}]`` with watches;
* ``stream``: the cloud end of the agents' ``fleet`` stream (leases, works down, status up);
* ``controller``: registration, health (leases to conditions and taints), placement, worksets;
* ``gitsource``: fleet objects kept in step with a folder of a git repository.

The decisions themselves are pure and live in ``fleet_model``; this package does the I/O.
"""
