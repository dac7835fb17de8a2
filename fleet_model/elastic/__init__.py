"""Elastic clusters, the pure part (issue 15): ResourcePolicy units and NodePool sizing.

No I/O and no clock: callers pass the time in and get "wake me at" deadlines back. The
cluster-mode agent (``edge_agent/cluster/elastic/``) drives these against its member cluster:
its mutating webhook asks ``units`` which node affinity a new pod gets, its controllers ask
``autoscaler`` which pool grows or shrinks. docs/elastic.md is the user's guide.
"""
