"""Engine choice, fallback, retries and circuit breakers."""

from gateway.routing.breaker import BreakerState, CircuitBreaker
from gateway.routing.errors import AllEnginesFailed, NoEngineCanServe, RequestRejected, RoutingError
from gateway.routing.router import OnAttempt, RoutedResult, Router
from gateway.routing.slots import EngineHealth

__all__ = [
    "AllEnginesFailed",
    "BreakerState",
    "CircuitBreaker",
    "EngineHealth",
    "NoEngineCanServe",
    "OnAttempt",
    "RequestRejected",
    "RoutedResult",
    "Router",
    "RoutingError",
]
