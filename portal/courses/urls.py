from django.urls import path

from portal.courses import team_views, views

app_name = "courses"
urlpatterns = [
    path("", views.home, name="home"),
    path("staff/courses/new/", views.course_new, name="course_new"),
    path("courses/<slug:course_slug>/", views.course_detail, name="course"),
    path("courses/<slug:course_slug>/staff/roster/", views.roster, name="roster"),
    path("courses/<slug:course_slug>/nickname/", views.nickname, name="nickname"),
    path("courses/<slug:course_slug>/team/", team_views.team_action, name="team"),
    path("courses/<slug:course_slug>/staff/teams/", team_views.staff_teams, name="teams"),
    path("courses/<slug:course_slug>/staff/assignments/", views.staff_assignments, name="staff_assignments"),
    path("courses/<slug:course_slug>/staff/settings/", views.course_settings, name="course_settings"),
    path("courses/<slug:course_slug>/staff/extensions/", views.extensions, name="extensions"),
    path("courses/<slug:course_slug>/staff/audit/", views.audit_log, name="audit"),
    path("courses/<slug:course_slug>/staff/gradebook/", views.gradebook_page, name="gradebook"),
    path("courses/<slug:course_slug>/staff/gradebook.csv", views.gradebook_csv, name="gradebook_csv"),
    path("courses/<slug:course_slug>/staff/rejudges/", views.rejudges, name="rejudges"),
    path("courses/<slug:course_slug>/staff/rejudges/<int:rejudge_id>/", views.rejudge_detail, name="rejudge"),
    path(
        "courses/<slug:course_slug>/staff/assignments/<slug:assignment_slug>/",
        views.staff_assignment_edit,
        name="staff_assignment_edit",
    ),
    path("courses/<slug:course_slug>/<slug:assignment_slug>/", views.assignment_detail, name="assignment"),
    path("courses/<slug:course_slug>/<slug:assignment_slug>/starter.zip", views.starter_download, name="starter"),
    path(
        "courses/<slug:course_slug>/<slug:assignment_slug>/submissions/",
        views.staff_submissions,
        name="staff_submissions",
    ),
]
