"""``python -m catalog``: run the catalog service with uvicorn."""

from catalog.app import create_app
from catalog.config import CatalogSettings
from kit.service import serve

if __name__ == "__main__":
    serve(create_app, CatalogSettings(), "catalog")
