"""Top-ups: payments through a provider (a mock one ships), the signed webhook, mock purchases."""
