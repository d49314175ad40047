"""HTTP API of the federation directory."""

from __future__ import annotations

from fastapi import APIRouter, Path

from contracts.identifiers import SubjectTokenError, validate_siren
from kit.errors import Forbidden, Unprocessable
from kit.service import ContextDep, CurrentPrincipal, SessionDep
from registry import service
from registry.schemas import NodeOut, TerritoryIn, TerritoryOut

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["directory"])

SirenPath = Path(pattern=r"^[0-9]{9}$", description="SIREN of the territory")


def _territory_out(territory: object) -> TerritoryOut:
    return TerritoryOut.model_validate(territory, from_attributes=True)


@router.get("/territories", response_model=list[TerritoryOut])
def list_territories(session: SessionDep) -> list[TerritoryOut]:
    """Territories of the federation (public)."""
    return [_territory_out(t) for t in service.list_territories(db_session=session)]


@router.get("/territories/{siren}", response_model=TerritoryOut)
def get_territory(session: SessionDep, siren: str = SirenPath) -> TerritoryOut:
    """One territory of the federation (public)."""
    return _territory_out(service.get_territory(db_session=session, siren=siren))


@router.put("/territories/{siren}", response_model=TerritoryOut)
def put_territory(
    body: TerritoryIn, session: SessionDep, ctx: ContextDep, principal: CurrentPrincipal, siren: str = SirenPath
) -> TerritoryOut:
    """Register or update a territory (federation operators only)."""
    if not principal.is_operator:
        raise Forbidden("only federation operators change the directory", code="auth.operator_required")
    try:
        validate_siren(siren)
    except SubjectTokenError as exc:
        raise Unprocessable(str(exc), code="territory.invalid_siren") from exc
    territory, _ = service.upsert_territory(db_session=session, siren=siren, body=body, source=ctx.source)
    return _territory_out(territory)


@router.get("/nodes", response_model=list[NodeOut])
def list_nodes(session: SessionDep) -> list[NodeOut]:
    """Nodes of the federation and the territories each hosts (public)."""
    return [NodeOut.model_validate(n, from_attributes=True) for n in service.list_nodes(db_session=session)]
