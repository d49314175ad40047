"""Topology of the demo federation: real territories, the nodes hosting them, and the port of every service instance.

Everything here is pure (no process, no file written) so the port rules can be tested on their own; the only reads
are of the referentiel file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kit.process import free_port

__all__ = [
    "DEFAULT_BASE_PORT",
    "DEFAULT_NATS_PORT",
    "DEMO_NODES",
    "DEMO_SIRENS",
    "HOST",
    "NODE_SERVICES",
    "REFERENTIEL_ENV",
    "Commune",
    "Federation",
    "Node",
    "NodeSpec",
    "NodeUrls",
    "ReferentielError",
    "ServiceInstance",
    "ServiceName",
    "Territory",
    "auto_ports",
    "build_federation",
    "default_referentiel_path",
    "fixed_ports",
    "instance_names",
    "load_territories",
    "plan_ports",
    "saved_ports",
    "service_instances",
]

HOST = "127.0.0.1"
DEFAULT_BASE_PORT = 8000
DEFAULT_NATS_PORT = 4222
REFERENTIEL_ENV = "MAILLAGE_REFERENTIEL"
_REFERENTIEL_NAME = "epci-bourgogne-franche-comte.json"

ServiceName = Literal["registry", "gateway", "catalog", "exchange", "consent"]
NODE_SERVICES: tuple[ServiceName, ...] = ("catalog", "exchange", "consent")


@dataclass(frozen=True)
class NodeSpec:
    """A node of the demo: its slug, display name, hosted SIRENs, and its slot (ports base + 100*slot + 1..3)."""

    id: str
    name: str
    territories: tuple[str, ...]
    slot: int


DEMO_NODES: tuple[NodeSpec, ...] = (
    NodeSpec("dijon", "Dijon Métropole", ("242100410",), 1),
    NodeSpec("besancon", "Grand Besançon Métropole", ("242500361",), 2),
    # Two small CCs that cannot run their own node share the regional operator's mutualised one.
    NodeSpec("operateur", "Opérateur régional mutualisé", ("200069540", "200068070"), 3),
)
DEMO_SIRENS: tuple[str, ...] = tuple(siren for node in DEMO_NODES for siren in node.territories)


class ReferentielError(Exception):
    """The referentiel of territories is missing or does not hold the demo territories."""


class Commune(BaseModel):
    insee: str
    name: str


class Territory(BaseModel):
    siren: str
    name: str
    type: str
    population: int
    communes: list[Commune]


class NodeUrls(BaseModel):
    catalog: str
    exchange: str
    consent: str


class Node(BaseModel):
    id: str
    name: str
    hosting_country: str = "FR"
    territories: list[str]
    urls: NodeUrls


class Federation(BaseModel):
    """The content of ``federation.json``: what the registry loads and what `maillage status` checks."""

    version: Literal[1] = 1
    territories: list[Territory]
    nodes: list[Node]
    registry_url: str
    gateway_url: str
    nats_url: str

    def territory(self, siren: str) -> Territory:
        """The territory with this SIREN."""
        for territory in self.territories:
            if territory.siren == siren:
                return territory
        raise KeyError(siren)


class ServiceInstance(BaseModel):
    """One service process of the federation, e.g. ``dijon-catalog``."""

    model_config = ConfigDict(frozen=True)

    name: str
    service: ServiceName
    node_id: str
    territories: tuple[str, ...] = ()
    url: str

    @property
    def port(self) -> int:
        return _port_of(self.url)


def instance_names() -> list[str]:
    """Names of every process of the demo, in start order: nats, registry, node services, gateway."""
    nodes = [f"{node.id}-{service}" for node in DEMO_NODES for service in NODE_SERVICES]
    return ["nats", "registry", *nodes, "gateway"]


def fixed_ports(base_port: int = DEFAULT_BASE_PORT, nats_port: int = DEFAULT_NATS_PORT) -> dict[str, int]:
    """Ports from a base: gateway ``base``, registry ``base+1``, node ``slot`` services ``base + 100*slot + 1..3``."""
    ports = {"nats": nats_port, "gateway": base_port, "registry": base_port + 1}
    for node in DEMO_NODES:
        for offset, service in enumerate(NODE_SERVICES, start=1):
            ports[f"{node.id}-{service}"] = base_port + 100 * node.slot + offset
    return ports


def auto_ports(pick: Callable[[], int] = free_port) -> dict[str, int]:
    """A distinct port that was free a moment ago for every process."""
    taken: set[int] = set()
    ports: dict[str, int] = {}
    for name in instance_names():
        port = pick()
        # The OS may hand the same ephemeral port out twice once the probe socket is closed.
        while port in taken:
            port = pick()
        taken.add(port)
        ports[name] = port
    return ports


def saved_ports(federation: Federation) -> dict[str, int]:
    """The ports recorded in a saved federation, keyed like :func:`fixed_ports`."""
    ports = {instance.name: instance.port for instance in service_instances(federation)}
    ports["nats"] = _port_of(federation.nats_url)
    return ports


def plan_ports(
    saved: Federation | None,
    *,
    mode: Literal["fixed", "auto"] | None = None,
    base_port: int | None = None,
    nats_port: int | None = None,
    pick: Callable[[], int] = free_port,
) -> dict[str, int]:
    """Ports for this run: the saved ones (or the defaults), replaced by whatever the options set explicitly.

    ``mode`` "fixed" means the default plan even when a federation was saved; "auto" means free ports.
    """
    if mode == "auto" and base_port is not None:
        raise ValueError("--base-port and --ports auto cannot be combined")
    if mode == "auto":
        ports = auto_ports(pick)
    elif saved is not None and mode is None:
        ports = saved_ports(saved)
    else:
        ports = fixed_ports()
    if base_port is not None:
        ports.update({name: port for name, port in fixed_ports(base_port).items() if name != "nats"})
    if nats_port is not None:
        ports["nats"] = nats_port
    return ports


def build_federation(territories: Sequence[Territory], ports: Mapping[str, int], host: str = HOST) -> Federation:
    """The demo federation: its territories, the three nodes hosting them, and every URL."""
    by_siren = {territory.siren: territory for territory in territories}
    missing = [siren for siren in DEMO_SIRENS if siren not in by_siren]
    if missing:
        raise ReferentielError(f"territories missing from the referentiel: {', '.join(missing)}")

    def url(name: str) -> str:
        return f"http://{host}:{ports[name]}"

    nodes = [
        Node(
            id=node.id,
            name=node.name,
            territories=list(node.territories),
            urls=NodeUrls(**{service: url(f"{node.id}-{service}") for service in NODE_SERVICES}),
        )
        for node in DEMO_NODES
    ]
    return Federation(
        territories=[by_siren[siren] for siren in DEMO_SIRENS],
        nodes=nodes,
        registry_url=url("registry"),
        gateway_url=url("gateway"),
        nats_url=f"nats://{host}:{ports['nats']}",
    )


def service_instances(federation: Federation) -> list[ServiceInstance]:
    """Every service process of a federation, in start order (registry, node services, gateway)."""
    instances = [ServiceInstance(name="registry", service="registry", node_id="registry", url=federation.registry_url)]
    for node in federation.nodes:
        for service in NODE_SERVICES:
            instances.append(
                ServiceInstance(
                    name=f"{node.id}-{service}",
                    service=service,
                    node_id=node.id,
                    territories=tuple(node.territories),
                    url=getattr(node.urls, service),
                )
            )
    instances.append(ServiceInstance(name="gateway", service="gateway", node_id="gateway", url=federation.gateway_url))
    return instances


def default_referentiel_path() -> Path:
    """``$MAILLAGE_REFERENTIEL``, else the shared referentiel next to the repository."""
    from_env = os.environ.get(REFERENTIEL_ENV)
    if from_env:
        return Path(from_env)
    repo_root = Path(__file__).resolve().parent.parent.parent
    return repo_root.parent / "shared" / "data" / "referentiel" / _REFERENTIEL_NAME


class _ReferentielCommune(BaseModel):
    insee: str
    nom: str


class _ReferentielEpci(BaseModel):
    siren: str
    nom: str
    type: str
    population: int = Field(alias="populationTotale")
    communes: list[_ReferentielCommune]


def load_territories(path: Path, sirens: Sequence[str] = DEMO_SIRENS) -> list[Territory]:
    """The territories ``sirens`` read from a referentiel file (a JSON list of EPCIs with their communes)."""
    if not path.is_file():
        raise ReferentielError(
            f"referentiel of territories not found at {path}; set {REFERENTIEL_ENV} to the path of {_REFERENTIEL_NAME}"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        wanted = [_ReferentielEpci.model_validate(item) for item in raw if item.get("siren") in set(sirens)]
    except (ValueError, AttributeError, TypeError, ValidationError) as exc:
        raise ReferentielError(f"referentiel {path} is not a JSON list of EPCIs: {exc}") from exc
    found = {epci.siren: epci for epci in wanted}
    missing = [siren for siren in sirens if siren not in found]
    if missing:
        raise ReferentielError(f"referentiel {path} has no territory with SIREN {', '.join(missing)}")
    return [
        Territory(
            siren=epci.siren,
            name=epci.nom,
            type=epci.type,
            population=epci.population,
            communes=[Commune(insee=commune.insee, name=commune.nom) for commune in epci.communes],
        )
        for epci in (found[siren] for siren in sirens)
    ]


def _port_of(url: str) -> int:
    port = urlsplit(url).port
    if port is None:
        raise ValueError(f"URL without a port: {url}")
    return port
