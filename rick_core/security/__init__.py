"""Security: audit records and sinks (the vault and the hash-chained log build on these)."""
