"""WSGI entry point: `gunicorn -c gunicorn.conf.py wsgi:app`, `flask --app wsgi …`."""
from zenzefi_backend import create_app

app = create_app()
