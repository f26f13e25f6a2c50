from django.urls import path

from portal.submissions import views

app_name = "submissions"
urlpatterns = [
    path("submissions/", views.my_submissions, name="mine"),
    path("submissions/<int:submission_id>/", views.submission_detail, name="detail"),
    path("api/jobs/<int:job_id>/", views.job_status, name="job_status"),
]
