"""`python -m zenzefi_backend.config` prints the README's configuration table."""
from . import settings_table

print(settings_table())
