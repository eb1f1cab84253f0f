"""Model providers behind one async interface, and the engine around them."""

from mmsafe.models.base import (
    ROLES,
    Capabilities,
    ChatResult,
    ConfigError,
    EndpointConfig,
    Price,
    Provider,
    ProviderError,
)
from mmsafe.models.engine import (
    AdaptiveLimiter,
    BudgetExceeded,
    CostLedger,
    FatalProviderError,
    ModelClient,
    ResponseCache,
    cache_key,
    default_cache_dir,
)
from mmsafe.models.registry import build_provider, parse_spec, resolve_endpoint

__all__ = ["ROLES", "AdaptiveLimiter", "BudgetExceeded", "Capabilities", "ChatResult", "ConfigError",
           "CostLedger", "EndpointConfig", "FatalProviderError", "ModelClient", "Price", "Provider",
           "ProviderError", "ResponseCache", "build_provider", "cache_key", "default_cache_dir",
           "parse_spec", "resolve_endpoint"]
