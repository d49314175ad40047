"""``python -m gateway``: run the gateway with uvicorn."""

from gateway.app import create_app
from gateway.config import GatewaySettings
from kit.service import serve

if __name__ == "__main__":
    serve(create_app, GatewaySettings(), "gateway")
