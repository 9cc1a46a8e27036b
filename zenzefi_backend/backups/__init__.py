"""Database backups (`flask backup …`)."""
