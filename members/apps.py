from django.apps import AppConfig


class MembersConfig(AppConfig):
    name = "members"
    verbose_name = "Member registry"
    default_auto_field = "django.db.models.BigAutoField"
