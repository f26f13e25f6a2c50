from django.urls import path

from portal.submissions import views

app_name = "submissions"
urlpatterns = [
    path("courses/<slug:course_slug>/<slug:assignment_slug>/submit/", views.submit, name="submit"),
    path("submissions/", views.my_submissions, name="mine"),
    path("submissions/<int:submission_id>/", views.submission_detail, name="detail"),
    path("submissions/<int:submission_id>/mark-final/", views.mark_final, name="mark_final"),
    path("submissions/<int:submission_id>/disqualify/", views.disqualify, name="disqualify"),
    path("api/jobs/<int:job_id>/", views.job_status, name="job_status"),
]
