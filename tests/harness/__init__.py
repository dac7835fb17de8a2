"""Real services for tests and benchmarks: kube-apiserver on kine, and mosquitto.

Nothing here is a fake. Each service runs as a child process on a free loopback port, in its
own process group, and dies with its parent (PR_SET_PDEATHSIG) even if pytest is killed.
"""
