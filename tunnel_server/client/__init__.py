"""The remote CLI: an API client pinned to the server's CA, login config, output, exit codes.

A client of the API, pinned to the server's CA; the login config file; output formats and exit
codes. ``tunnel_server.cli`` parses the command line and calls in here;
nothing here opens the server's data dir except ``connection.from_data_dir`` (the shortcut on
the server machine, which still talks to the API).
"""
