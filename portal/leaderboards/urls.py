from django.urls import path

from portal.leaderboards import views

app_name = "leaderboards"
urlpatterns = [
    path("courses/<slug:course_slug>/<slug:assignment_slug>/leaderboard/", views.leaderboard, name="leaderboard"),
]
