"""The I/O step sizes every model uses, so the models differ in how they wait, not in how much they move."""

RECV_BYTES = 64 * 1024  # one recv(): several pipelined heads, far more than one head needs
READ_CHUNK = 256 * 1024  # one read-and-send step of a file body: large sends batch well, memory stays bounded
