"""The Netring Django project: settings, URLs, the Celery app and the dev/demo launcher."""

from netring_site.celery import app as celery_app

__all__ = ["celery_app"]
