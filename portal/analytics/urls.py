from django.urls import path

from portal.analytics import views

app_name = "analytics"
urlpatterns = [
    path(
        "courses/<slug:course_slug>/staff/assignments/<slug:assignment_slug>/analytics/",
        views.assignment_analytics,
        name="assignment",
    ),
]
