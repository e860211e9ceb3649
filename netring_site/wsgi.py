"""WSGI entry point for gunicorn (see compose/gunicorn.conf.py) and runserver (WSGI_APPLICATION).

Accepted member heartbeats, most of the registry's requests, are answered before Django's
request handling by ``members.fastpath``; every other request goes to Django's handler unchanged.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from django.core.wsgi import get_wsgi_application

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "netring_site.settings")
django_handler = get_wsgi_application()

# After get_wsgi_application(): the fast path imports models and views, which need django.setup().
from members.fastpath import HeartbeatFastPath  # noqa: E402

application: WSGIApplication = HeartbeatFastPath(django_handler)
