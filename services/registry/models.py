"""Tables of the federation directory."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON
from sqlmodel import Column, Field, SQLModel

from kit.db import utcnow

__all__ = ["Node", "Organisation", "Territory"]


class Territory(SQLModel, table=True):
    """A territory of the federation (an EPCI, a commune, a syndicate), identified by its SIREN."""

    __tablename__ = "territory"

    siren: str = Field(primary_key=True, max_length=9)
    name: str = Field(max_length=200)
    kind: str = Field(max_length=16)
    population: int = 0
    communes: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    updated_at: datetime = Field(default_factory=utcnow)


class Node(SQLModel, table=True):
    """A deployment of catalog, exchange and consent hosting one or several territories."""

    __tablename__ = "node"

    id: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=200)
    hosting_country: str = Field(max_length=2)
    territories: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    urls: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    updated_at: datetime = Field(default_factory=utcnow)


class Organisation(SQLModel, table=True):
    """A partner organisation of the federation (company, lab, association), identified by its SIRET."""

    __tablename__ = "organisation"

    siret: str = Field(primary_key=True, max_length=14)
    name: str = Field(max_length=200)
    contact_email: str = Field(max_length=254, description="a functional mailbox of the organisation")
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
