"""The RPC contracts between Corral's services, declared once for callers and servers.

Every method one service serves to another over `corral.rpc` (see `corral_common.rpc`) is a
`Method`: the serving service's name, the method's name, its params model and its result model,
and the lane it is served on when it may be slow. Callers send a params model and get the result
model back (`await rpc.call(SESSION_STORE.assemble, AssembleParams(...))`, validated on arrival);
servers register a handler per declaration (`corral_common.rpc.MethodTable`), which receives the
params already parsed. Neither end names a service or a method with a bare string or reads a
result as a dict.

The wire stays `{"method", "params"}` in and `{"ok", "result"}` out, JSON objects as before:
params are sent as the fields the caller set (`exclude_unset`), results as the model dumps them.
Params models ignore fields they do not know (a newer caller talks to an older server); result
models keep them (a newer server's extra field passes through an older gateway unchanged).

Bad params are refused the same way wherever they are found: `parse` on the server, or building
a params model on the caller (which raises the same error rather than pydantic's), both raise
`invalid_request` naming the field, never echoing its value:
`CorralError(invalid_request, "invalid <field>: <why>", details={"errors": [{field, message}]})`.

The declarations: `contracts.session_store.SESSION_STORE` and
`contracts.model_manager.MODEL_MANAGER`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from corral_common.errors import CorralError, ErrorType

SESSION_STORE_SERVICE = "session-store"
MODEL_MANAGER_SERVICE = "model-manager"


def invalid_params(exc: ValidationError) -> CorralError:
    """pydantic's errors as `invalid_request`: the first one in the message, all in details,
    each naming its field and never echoing the value."""
    errors = [
        {
            "field": ".".join(str(part) for part in error["loc"]) or "params",
            "message": error["msg"],
        }
        for error in exc.errors(include_input=False, include_url=False)
    ]
    first = errors[0]
    return CorralError(
        ErrorType.INVALID_REQUEST,
        f"invalid {first['field']}: {first['message']}",
        details={"errors": errors},
    )


class Params(BaseModel):
    """A method's params. Unknown fields are ignored, so a newer caller can talk to an older
    server. Built with bad values it raises the invalid-request error `parse` raises on the
    server, so a caller refuses a bad value in the very words the server would."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise invalid_params(exc) from None

    def wire(self) -> dict[str, Any]:
        """The params as they travel: the fields the caller set."""
        return self.model_dump(exclude_unset=True)


class Result(BaseModel):
    """A method's result. Fields this release does not know are kept (and dumped again), so a
    document a newer server answers passes through an older caller unchanged."""

    model_config = ConfigDict(extra="allow", frozen=True)

    def wire(self) -> dict[str, Any]:
        """The result as it travels, and as a gateway answers it when it is an API document."""
        return self.model_dump()


class Empty(Result):
    """`{}`: the answer of a method that only acts."""


P = TypeVar("P", bound=Params)
R = TypeVar("R", bound=Result)


def parse(model: type[P], params: Any) -> P:
    """Validate a request's params; errors become `invalid_request` naming the field."""
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        raise invalid_params(exc) from None


@dataclass(frozen=True)
class Method(Generic[P, R]):
    """One RPC method: who serves it, its name on the wire, its params and result models, and
    the lane it is served on (None: the service's main queue, the hot path)."""

    service: str
    name: str
    params: type[P]
    result: type[R]
    lane: str | None = None

    @property
    def route(self) -> str:
        """The routing key (and queue suffix) its requests go to."""
        return self.service if self.lane is None else f"{self.service}.{self.lane}"

    def __str__(self) -> str:
        return f"{self.service}.{self.name}"


def declared(api: object) -> tuple[Method[Any, Any], ...]:
    """The methods an API namespace (`SESSION_STORE`, `MODEL_MANAGER`) declares."""
    return tuple(value for value in vars(type(api)).values() if isinstance(value, Method))


def lanes_of(apis: Iterable[object]) -> dict[str, dict[str, str]]:
    """service -> method -> lane, for the methods declared on a lane of their own."""
    lanes: dict[str, dict[str, str]] = {}
    for api in apis:
        for method in declared(api):
            if method.lane is not None:
                lanes.setdefault(method.service, {})[method.name] = method.lane
    return lanes
