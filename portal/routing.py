from django.urls import path

from portal.leaderboards.consumers import LeaderboardConsumer
from portal.submissions.consumers import JobEventsConsumer

websocket_urlpatterns = [
    path("ws/jobs/<int:job_id>/", JobEventsConsumer.as_asgi()),
    path("ws/assignments/<int:assignment_id>/leaderboard/", LeaderboardConsumer.as_asgi()),
]
