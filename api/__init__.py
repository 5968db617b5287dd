"""HTTP only: the app factory, routes, request/response schemas, dependencies, and the CLI."""
