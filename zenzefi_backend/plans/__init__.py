"""Plans (SPEC §3.8): the rate-limit tiers, their purchase through the ledger, their expiry."""
