"""Protocol constants shared by the server and (by value) the Slicer client.

Bump ``PROTOCOL_VERSION`` on any change a client of the previous version would misread; the
client compares it with its own on connect and refuses to talk to a different version.
"""

from __future__ import annotations

SERVICE_NAME = "sammed-server"
PROTOCOL_VERSION = 1
API_PREFIX = "/v1"

TOKEN_HEADER = "Authorization"  # "Bearer <token>"
VOLUME_HEADER = "X-SAMMed-Volume"  # JSON geometry of an uploaded volume (see schemas.VolumeUpload)

READY_MARKER = "SAMMed server ready:"  # serve() prints "<marker> <url>" once it accepts connections
TOKEN_MARKER = "token="  # with --token auto the ready line ends " token=<random token>"
