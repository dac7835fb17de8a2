"""Real services for tests and benchmarks, and the one way to wait for them.

kube-apiserver on kine, mosquitto, and our own daemons (``daemons``, ``kube_agent``): nothing
here is a fake but ``faultproxy``, which only cuts links. Each service runs as a child process
on a free loopback port, in its own process group, and dies with its parent
(PR_SET_PDEATHSIG) even if pytest is killed. Tests wait with ``waiting.eventually``.
"""
