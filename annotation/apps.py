from django.apps import AppConfig


class AnnotationConfig(AppConfig):
    name = "annotation"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # signals imports the models and services, which need the app registry ready.
        from . import signals

        signals.connect()
