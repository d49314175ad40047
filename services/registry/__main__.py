"""``python -m registry``: run the federation registry with uvicorn."""

from kit.service import serve
from registry.app import create_app
from registry.config import RegistrySettings

if __name__ == "__main__":
    serve(create_app, RegistrySettings(), "registry")
