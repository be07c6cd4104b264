"""Emulated network links: two network namespaces joined by a veth pair shaped by a profile (or, for
delay without netem, by two TUN devices and the userspace delay line).

    from serverzoo.clients.links import LinkedHosts
    with LinkedHosts("lossy") as link:                  # LinkUnavailable if it cannot be built
        server, url = link.start_ready([sys.executable, "-m", "serverzoo", "serve", "threading",
                                        "--root", root, "--host", link.server_addr])
        with link.client_namespace():                   # sockets made here live in the client host
            ...                                         # connect to url

profiles.py    link profiles ([links.NAME] in links.toml): delay, jitter, rate, loss
shaping.py     what the kernel offers (netem? tbf? nftables? TUN?) and the commands for a profile
namespaces.py  LinkedHosts, leftover cleanup
delay_line.py  the userspace delay line: a forwarder between two TUN devices (delay without netem)
delay_schedule.py  its scheduling, sans-IO: delay, jitter, rate, queue, loss
tun_link.py    the owner's side of the delay line; the capacity `serverzoo net check` measured
line_check.py  measuring the delay line: delay against the setting, forwarding capacity
watchdog.py    removes a run's namespaces if the process that made them dies without doing it
net_cli.py     `serverzoo net` (cleanup, links, check, up)
"""

from .namespaces import LinkedHosts, cleanup_leftovers, require_support
from .profiles import LinkProfile, get_profile, load_profiles
from .shaping import LinkUnavailable

__all__ = [
    "LinkProfile",
    "LinkUnavailable",
    "LinkedHosts",
    "cleanup_leftovers",
    "get_profile",
    "load_profiles",
    "require_support",
]
