"""Elastic clusters, the agent side: node providers and CRDs against real things."""
