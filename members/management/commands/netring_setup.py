"""Create the beat schedules and the admin account; safe to run at every start."""

from __future__ import annotations

import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from netring_site.config import ConfigError, Env
from netring_site.schedules import SCHEDULES


class Command(BaseCommand):
    help = "Create missing beat schedules and the admin account (NETRING_ADMIN_USER / NETRING_ADMIN_PASSWORD)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--reset", action="store_true", help="re-apply intervals from the environment")
        parser.add_argument("--no-admin", action="store_true", help="do not create the admin account")

    def handle(self, *args: Any, reset: bool = False, no_admin: bool = False, **options: Any) -> None:
        with transaction.atomic():
            self._schedules(reset)
        if not no_admin:
            self._admin()

    def _schedules(self, reset: bool) -> None:
        for schedule in SCHEDULES:
            seconds = int(getattr(settings, schedule.interval_setting))
            interval, _ = IntervalSchedule.objects.get_or_create(every=seconds, period=IntervalSchedule.SECONDS)
            # A message older than its interval is dropped: after an outage, beat's backlog
            # must not run a burst of stale rounds.
            task, created = PeriodicTask.objects.get_or_create(
                name=schedule.name,
                defaults={
                    "task": schedule.task,
                    "interval": interval,
                    "queue": schedule.queue,
                    "expire_seconds": seconds,
                },
            )
            if reset and not created:
                task.interval, task.expire_seconds, task.queue = interval, seconds, schedule.queue
                task.save()
            if created or reset:
                self.stdout.write(f"schedule {schedule.name!r}: every {seconds}s")

    def _admin(self) -> None:
        env = Env()
        username = env.str("NETRING_ADMIN_USER", "admin")
        password = env.secret("NETRING_ADMIN_PASSWORD")
        try:
            env.check()
        except ConfigError as exc:
            raise CommandError(str(exc)) from None
        users = get_user_model()
        if users.objects.filter(is_superuser=True).exists() and not password:
            return
        user = users.objects.filter(username=username).first()
        if user is not None and not password:
            return
        generated = not password
        password = password or secrets.token_urlsafe(12)
        if user is None:
            users.objects.create_superuser(username=username, email="", password=password)
        else:
            user.set_password(password)
            user.is_staff = user.is_superuser = True
            user.save()
        if generated:
            # Printed once: the generated password is not stored anywhere in clear.
            self.stdout.write(self.style.WARNING(f"admin account: {username} / {password}  (shown once)"))
        else:
            self.stdout.write(f"admin account: {username} (password from NETRING_ADMIN_PASSWORD)")
