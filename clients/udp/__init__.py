"""UDP beside TCP, measured: a responder (`serverzoo udp serve`) and a tester (`serverzoo udp test`).

wire.py          the datagram format (sequence number and send time in every datagram)
receiver_stats.py  loss, duplicates, reordering and RFC 3550 jitter from what arrived
responder.py     the UDP echo/counting sink plus a small TCP echo/sink on the same port number
stream.py        the paced UDP sender, the TCP bulk stream and the rate sweep
roundtrip.py     request/response latency: UDP, TCP keep-alive, TCP fresh connection
udp_cli.py       the `serverzoo udp` click group
"""
