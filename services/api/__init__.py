"""HTTP control plane of a StyleCast node, run inside the supervisor process.

- `control`: the `ControlPlane` protocol the supervisor implements, its response models and refusals.
- `app`: `create_app(control, service)`, the FastAPI application (routes, token, errors, OpenAPI).
- `server`: `ApiServer`, uvicorn on a background thread of the host program.
- `auth`, `bodies`, `errors`: bearer-token check, bounded request bodies, error bodies and mapping.
"""
