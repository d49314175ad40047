"""``python -m exchange``: run the exchange service with uvicorn."""

from exchange.app import create_app
from exchange.config import ExchangeSettings
from kit.service import serve

if __name__ == "__main__":
    serve(create_app, ExchangeSettings(), "exchange")
