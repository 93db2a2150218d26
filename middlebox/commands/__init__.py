"""Subcommands of ``mpproxy`` that the product owns: config, pki, gateway, node, status."""
