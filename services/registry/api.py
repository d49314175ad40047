"""HTTP API of the federation directory."""

from __future__ import annotations

from fastapi import APIRouter, Path

from contracts.identifiers import SubjectTokenError, validate_siren
from kit.auth import Principal
from kit.errors import Forbidden, Unprocessable
from kit.service import ContextDep, CurrentPrincipal, SessionDep
from registry import service
from registry.schemas import NodeOut, OrganisationIn, OrganisationOut, TerritoryIn, TerritoryOut

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
    require_operator(principal)
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


def require_operator(principal: Principal) -> None:
    """Federation operators only."""
    if not principal.is_operator:
        raise Forbidden("only federation operators do this", code="auth.operator_required")


@router.post("/organisations", response_model=OrganisationOut, status_code=201, tags=["directory"])
def admit_organisation(
    body: OrganisationIn, session: SessionDep, ctx: ContextDep, principal: CurrentPrincipal
) -> OrganisationOut:
    """Admit a partner organisation (federation operators only)."""
    require_operator(principal)
    organisation = service.admit_organisation(db_session=session, body=body, source=ctx.source)
    return OrganisationOut.model_validate(organisation, from_attributes=True)


@router.get("/organisations", response_model=list[OrganisationOut], tags=["directory"])
def list_organisations(session: SessionDep) -> list[OrganisationOut]:
    """Partner organisations of the federation (public: the register names them)."""
    return [
        OrganisationOut.model_validate(o, from_attributes=True) for o in service.list_organisations(db_session=session)
    ]


@router.get("/organisations/{siret}", response_model=OrganisationOut, tags=["directory"])
def get_organisation(session: SessionDep, siret: str) -> OrganisationOut:
    """One partner organisation."""
    return OrganisationOut.model_validate(
        service.get_organisation(db_session=session, siret=siret), from_attributes=True
    )
