"""Sans-IO tunnel protocol: frames, stream multiplexing, flow control, keepalive (pure: no I/O)."""
