"""What both daemons (``edge-agent`` and ``tunnel-server``) share that touches the OS.

The pure libraries may not do I/O and the two sides may not import each other, so the few
helpers both need live here: journald-friendly logging, sd_notify, atomic file replacement,
reading a folder of device model files and opening a twin database. Imports nothing of ours
but the pure ``device_models``.
"""
