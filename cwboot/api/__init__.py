"""cwboot's REST API: an ASGI app (``create_app``) served by hypercorn on trio (``serve_api``).

See docs/api.md for the routes, authentication and how other modules add routes.
"""

from cwboot.api.app import ApiApp, create_app
from cwboot.api.auth import Tokens, admin_token_path, tokens_from_config
from cwboot.api.http import ApiError, Request, Response, error_response, json_response, no_content
from cwboot.api.object_routes import API_PREFIX, collection_of, collections
from cwboot.api.routing import Route
from cwboot.api.server import ApiBinding, serve_api

__all__ = [
    "API_PREFIX",
    "ApiApp",
    "ApiBinding",
    "ApiError",
    "Request",
    "Response",
    "Route",
    "Tokens",
    "admin_token_path",
    "collection_of",
    "collections",
    "create_app",
    "error_response",
    "json_response",
    "no_content",
    "serve_api",
    "tokens_from_config",
]
