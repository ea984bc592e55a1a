"""URLs of the example project (the images routes are answered before Django sees them)."""

from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [path("hello/", views.hello)]
