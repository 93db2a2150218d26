"""User-space TCP endpoint: sans-I/O core (server side of RFC 9293) and packet codec."""
