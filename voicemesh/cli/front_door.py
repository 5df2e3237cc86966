"""``voicemesh nginx render`` and ``voicemesh probe``: the front door's config and healthcheck."""

from __future__ import annotations

import sys

from voicemesh.nginx import UpstreamGateway


def nginx_render(target: str, output: str | None, gateway: UpstreamGateway | None = None) -> int:
    """Print (or write to ``output``) the nginx config for ``target``; exit 0.

    ``gateway`` is the gateway nginx fronts (default: its ``VOICEMESH_GATEWAY_*``
    environment for ``embedded``, the defaults for ``compose``).
    """
    from voicemesh import nginx

    if target == "compose":
        text = nginx.render_compose_conf(gateway)
    else:
        from voicemesh.mesh.plan import MeshPaths, nginx_layout

        settings = nginx.get_settings()
        upstream = gateway or UpstreamGateway()
        text = nginx.render_nginx_conf(
            settings,
            target="embedded",
            upstreams=[f"127.0.0.1:{upstream.port}"],
            body_limit_bytes=upstream.body_limit_bytes,
            layout=nginx_layout(MeshPaths.from_settings(), settings.port),
        )
    if output:
        with open(output, "w", encoding="utf-8") as handle:
            handle.write(text)
    else:
        sys.stdout.write(text)
    return 0


def probe(url: str, timeout: float) -> int:
    """0 when ``url`` answers 200, else 1 (a healthcheck that needs no curl in the image)."""
    import httpx

    try:
        response = httpx.get(url, timeout=timeout, trust_env=False)
    except httpx.HTTPError as exc:
        print(f"probe {url}: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1
    if response.status_code != 200:
        print(f"probe {url}: HTTP {response.status_code}", file=sys.stderr)
        return 1
    return 0
