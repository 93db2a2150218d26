"""The emulation runner (``mpproxy bench emulate``): the replay's workloads run for real on
the emulated testbed, through the real gateway and node, beside the best single carrier
and Linux kernel MPTCP, on the same trace seconds, with the replay's metrics; and the
calibration of the simulator against it (docs/replay.md).

``apps`` holds the client and server programs run inside the namespaces, ``stretches``
which seconds of the traces each of ``--repeat N`` stretches plays, ``runner`` the rows
(one fresh testbed per row and stretch), ``directions`` both directions of a proxy row
from the gateway's and the node's status, ``report`` the means, spreads and paired
ratios, ``calibrate`` the simulator-versus-emulation comparison, ``command`` the CLI.
"""
