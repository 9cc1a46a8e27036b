"""Usage analytics: daily rollups of proxy usage and the ledger, the two analytics endpoints, the dashboards."""
