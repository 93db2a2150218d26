"""Third-party carrier context.

Cell, RSRP and position per carrier, and the loop that feeds them to the scheduler and
the history.
"""
