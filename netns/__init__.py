"""Namespace plumbing (pyroute2) and the emulated testbed built from it."""
