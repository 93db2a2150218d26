"""The emulation runner (``mpproxy bench emulate``): the replay's workloads run for real on
the emulated testbed, through the real gateway and node, beside the best single carrier
and Linux kernel MPTCP, with the replay's metrics and report; and the calibration of the
simulator against it (docs/replay.md).

``apps`` holds the client and server programs run inside the namespaces, ``runner`` the
rows (one fresh testbed each), ``calibrate`` the simulator-versus-emulation comparison,
``command`` the CLI.
"""
