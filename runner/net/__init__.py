"""Container networks: what a container's network namespace is connected to, and how.

Vocabulary: a *network* is a record (``networks``): ``bridge`` (the default, ``strata0``), a user
network (a bridge of its own, ``br-<id>``), or ``host``/``none``. A container's *endpoint* on a
bridge is a veth pair (``veth<id>`` on the host, ``eth0`` inside), an address *leased* from the
network's subnet (``leases``: host-wide, under ``/run/strata/net``) and its *published ports*
(``ports``: a socket bound to each host port by the supervisor, a DNAT element in strata's nftables
table, ``nft``). Rootless containers have no bridge: ``pasta`` connects their namespace instead.
``attach`` is what the supervisor calls; ``etc`` writes /etc/hosts and /etc/resolv.conf.
"""
