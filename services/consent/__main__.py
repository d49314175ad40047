"""``python -m consent``: run the consent service with uvicorn."""

from consent.app import create_app
from consent.config import ConsentSettings
from kit.service import serve

if __name__ == "__main__":
    serve(create_app, ConsentSettings(), "consent")
