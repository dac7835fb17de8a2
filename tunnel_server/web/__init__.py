"""HTTP plumbing every part of the server shares, with no routes of its own.

- ``bodies``: the one bounded JSON body reader, and the bound on bodies sent where none belong;
- ``errors``: the one ``ApiError`` and its JSON answer, and the middleware that gives every
  error under ``/api/`` that shape;
- ``peer_log``: one short line for a client's bad request instead of a traceback.
"""
